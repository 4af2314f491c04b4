"""Translating a ChatRequest into each provider's HTTP call, and assembling completions."""

from __future__ import annotations

import pytest

import rakka_trio as rk
from rakka_trio._call._session import auth_headers
from rakka_trio._chunks import StreamChunk, ToolCallDelta, Usage
from rakka_trio._request import ChatRequest, Completion, build_http_request

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "weather?"},
]


def test_openai_streams_with_usage_even_when_extras_override() -> None:
    req = ChatRequest(
        messages=MESSAGES,
        max_tokens=50,
        temperature=0.2,
        tools=TOOLS,
        extra={"stream_options": {"include_obfuscation": False}, "seed": 7},
    )
    call = build_http_request("openai", "https://api.openai.com/v1/", "gpt-4o-mini", req)
    assert call.url == "https://api.openai.com/v1/chat/completions"
    body = call.json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["messages"] == MESSAGES
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (50, 0.2, 7)
    assert body["tools"] == TOOLS


def test_anthropic_shape() -> None:
    req = ChatRequest(messages=MESSAGES, tools=TOOLS, stop=["END"])
    call = build_http_request("anthropic", "https://api.anthropic.com", "claude-x", req)
    assert call.url == "https://api.anthropic.com/v1/messages"
    body = call.json
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 1024  # required by Anthropic
    assert body["stream"] is True
    assert body["stop_sequences"] == ["END"]
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    versioned = build_http_request("anthropic", "http://127.0.0.1:9/v1", "claude-x", req)
    assert versioned.url == "http://127.0.0.1:9/v1/messages"


def test_gemini_shape() -> None:
    req = ChatRequest(messages=MESSAGES, max_tokens=64, temperature=0.1, tools=TOOLS)
    call = build_http_request(
        "gemini", "https://generativelanguage.googleapis.com", "gemini-2.0-flash", req
    )
    assert call.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.0-flash:streamGenerateContent"
    )
    assert call.params == {"alt": "sse"}
    body = call.json
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.1}
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert "temperature" not in body


def test_responses_shape() -> None:
    req = ChatRequest(messages=MESSAGES, max_tokens=10, tools=TOOLS)
    call = build_http_request("openai-responses", "https://api.openai.com/v1", "gpt-5", req)
    assert call.url == "https://api.openai.com/v1/responses"
    body = call.json
    assert body["instructions"] == "Be brief."
    assert body["max_output_tokens"] == 10
    assert body["tools"][0] == {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }


def test_request_validation() -> None:
    with pytest.raises(rk.ConfigError, match="messages"):
        ChatRequest(messages=[])
    with pytest.raises(rk.ConfigError, match=r"messages\[1\]"):
        ChatRequest(messages=[{"role": "user", "content": "x"}, {"content": "no role"}])
    with pytest.raises(rk.ConfigError, match="max_tokens"):
        ChatRequest(messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_completion_assembles_text_tools_and_usage() -> None:
    chunks = [
        StreamChunk(text="Hel"),
        StreamChunk(text="lo", tool_calls=(ToolCallDelta(0, "call_1", "get_weather", '{"ci'),)),
        StreamChunk(tool_calls=(ToolCallDelta(0, None, None, 'ty": "Oslo"}'),)),
        StreamChunk(finish_reason="tool_calls"),
        StreamChunk(usage=Usage(10, 5)),
    ]
    done = Completion.from_chunks(chunks, endpoint="ep", attempts=2)
    assert done.text == "Hello"
    assert done.finish_reason == "tool_calls"
    assert done.usage == Usage(10, 5, total_tokens=15)
    assert len(done.tool_calls) == 1
    call = done.tool_calls[0]
    assert (call.id, call.name) == ("call_1", "get_weather")
    assert call.parsed_arguments() == {"city": "Oslo"}
    assert done.attempts == 2


def test_azure_deployment_url_api_version_and_body() -> None:
    req = ChatRequest(messages=MESSAGES, max_tokens=20)
    call = build_http_request(
        "azure-openai",
        "https://res.openai.azure.com/openai/",
        "gpt-4o",
        req,
        options={"deployment": "chat prod", "api_version": "2025-01-01-preview"},
    )
    assert (
        call.url == "https://res.openai.azure.com/openai/deployments/chat%20prod/chat/completions"
    )
    assert call.params == {"api-version": "2025-01-01-preview"}
    assert call.json["stream_options"] == {"include_usage": True}
    assert call.json["model"] == "gpt-4o" and call.json["max_tokens"] == 20
    default = build_http_request("azure-openai", "https://res.openai.azure.com", "gpt-4o", req)
    assert default.url == "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
    assert default.params == {"api-version": "2024-10-21"}


def test_compatible_servers_get_the_openai_body() -> None:
    req = ChatRequest(messages=MESSAGES, max_tokens=5)
    compat = build_http_request("openai-compatible", "http://127.0.0.1:8000/v1", "qwen", req)
    plain = build_http_request("openai", "http://127.0.0.1:8000/v1", "qwen", req)
    assert (compat.url, compat.json) == (plain.url, plain.json)


@pytest.mark.parametrize(
    ("provider", "options", "expected"),
    [
        ("openai", {}, {"authorization": "Bearer k-1"}),
        ("openai-compatible", {}, {"authorization": "Bearer k-1"}),
        ("openai-responses", {}, {"authorization": "Bearer k-1"}),
        ("anthropic", {}, {"anthropic-version": "2023-06-01", "x-api-key": "k-1"}),
        ("gemini", {}, {"x-goog-api-key": "k-1"}),
        ("azure-openai", {}, {"api-key": "k-1"}),
        ("azure-openai", {"auth": "bearer"}, {"authorization": "Bearer k-1"}),
    ],
)
def test_each_provider_names_its_auth_headers(
    provider: str, options: dict[str, str], expected: dict[str, str]
) -> None:
    assert auth_headers(provider, rk.Secret("k-1"), options) == expected


def test_anthropic_version_header_goes_out_without_a_credential() -> None:
    assert auth_headers("anthropic", None) == {"anthropic-version": "2023-06-01"}
    assert auth_headers("openai", None) == {}


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(rk.ConfigError, match="unknown provider 'cohere'"):
        build_http_request("cohere", "http://x", "m", ChatRequest(messages=MESSAGES))


def test_completion_carries_what_callers_send_back() -> None:
    cite = rk.Citation(kind="url_citation", url="https://example.org", start_index=0, end_index=5)
    chunks = [
        StreamChunk(thinking="Think", thinking_signature="sig-"),
        StreamChunk(thinking_signature="A", redacted_thinking="opaque-1"),
        StreamChunk(redacted_thinking="opaque-2"),
        StreamChunk(refusal="I can't "),
        StreamChunk(refusal="do that.", citations=(cite,)),
        StreamChunk(tool_calls=(ToolCallDelta(0, "c1", "f", "{}", signature="call-sig"),)),
        StreamChunk(text="other choice", index=1, redacted_thinking="not choice 0"),
        StreamChunk(finish_reason="tool_calls"),
    ]
    done = Completion.from_chunks(chunks, endpoint="ep", attempts=1)
    assert done.thinking == "Think" and done.thinking_signature == "sig-A"
    assert done.redacted_thinking == ("opaque-1", "opaque-2")  # one entry per block
    assert done.refusal == "I can't do that."
    assert done.citations == (cite,)
    assert done.tool_calls[0].signature == "call-sig"
    assert done.text == ""
