"""Translating a ChatRequest into each provider's HTTP call, and assembling completions."""

from __future__ import annotations

import pytest

import rakka_trio as rk
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
