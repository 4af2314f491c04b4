"""Provider stream adapters against recorded-shape streams (tests/fixtures/streams/).

Each fixture is played through the real SSEDecoder, cut into reads at random points, and then
through the adapter; the test checks what a user would see: the text, thinking and tool calls
they can reassemble, the finish reason, the usage, and the typed error at the right moment.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import attrs
import pytest

import rakka_trio as rk
from rakka_trio import SSEDecoder, SSEEvent, StreamChunk, ToolCallDelta, Usage
from rakka_trio._providers import (
    AnthropicAdapter,
    GeminiAdapter,
    OpenAIChatAdapter,
    classify_stream_error,
    prepare_openai_stream_body,
    stream_adapter_for,
)
from rakka_trio._providers._base import StreamAdapter

FIXTURES = Path(__file__).parent / "fixtures" / "streams"


@attrs.define
class Played:
    """What a consumer of one stream ends up with."""

    chunks: list[StreamChunk]
    adapter: StreamAdapter
    error: rk.RakkaError | None

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def thinking(self) -> str:
        return "".join(c.thinking for c in self.chunks)

    @property
    def signature(self) -> str:
        return "".join(c.thinking_signature for c in self.chunks)

    @property
    def citations(self) -> list[rk.Citation]:
        return [c for chunk in self.chunks for c in chunk.citations]

    @property
    def finish_reasons(self) -> list[str]:
        return [c.finish_reason for c in self.chunks if c.finish_reason is not None]

    @property
    def usage(self) -> Usage | None:
        found = [c.usage for c in self.chunks if c.usage is not None]
        return found[-1] if found else None

    def tool_calls(self) -> list[dict[str, Any]]:
        """Reassemble tool calls from their deltas, as a client would."""
        calls: dict[int, dict[str, Any]] = {}
        for chunk in self.chunks:
            for delta in chunk.tool_calls:
                call = calls.setdefault(
                    delta.index, {"id": None, "name": None, "arguments": "", "signature": None}
                )
                call["id"] = call["id"] or delta.id
                call["name"] = call["name"] or delta.name
                call["arguments"] += delta.arguments_delta
                call["signature"] = call["signature"] or delta.signature
        return [calls[i] for i in sorted(calls)]


def play(name: str, provider: str, *, seed: int = 0) -> Played:
    raw = (FIXTURES / name).read_bytes()
    rng = random.Random(seed)
    decoder = SSEDecoder()
    adapter = stream_adapter_for(provider, endpoint="ep-1")
    chunks: list[StreamChunk] = []
    pos = 0
    try:
        while pos < len(raw):
            step = rng.randint(1, 300)
            for event in decoder.feed(raw[pos : pos + step]):
                chunks += adapter.feed(event)
            pos += step
        for event in decoder.close():
            chunks += adapter.feed(event)
        chunks += adapter.finish()
    except rk.RakkaError as exc:
        return Played(chunks, adapter, exc)
    return Played(chunks, adapter, None)


def feed_all(adapter: StreamAdapter, *events: SSEEvent) -> list[StreamChunk]:
    out: list[StreamChunk] = []
    for event in events:
        out += adapter.feed(event)
    return out


def data(obj: Any, event: str = "message") -> SSEEvent:
    return SSEEvent(event, json.dumps(obj))


ALL_FIXTURES = [
    ("openai_chat_text.sse", "openai"),
    ("openai_chat_tools.sse", "openai"),
    ("openai_chat_server_error.sse", "openai"),
    ("openai_chat_quota_error.sse", "openai"),
    ("openai_chat_truncated.sse", "openai"),
    ("openai_chat_content_filter.sse", "openai"),
    ("openai_compatible_reasoning.sse", "openai-compatible"),
    ("openai_responses_text.sse", "openai-responses"),
    ("openai_responses_tools.sse", "openai-responses"),
    ("openai_responses_failed.sse", "openai-responses"),
    ("openai_responses_error.sse", "openai-responses"),
    ("openai_responses_incomplete.sse", "openai-responses"),
    ("openai_responses_truncated.sse", "openai-responses"),
    ("anthropic_text.sse", "anthropic"),
    ("anthropic_thinking_tools.sse", "anthropic"),
    ("anthropic_citations.sse", "anthropic"),
    ("anthropic_overloaded.sse", "anthropic"),
    ("anthropic_truncated.sse", "anthropic"),
    ("anthropic_refusal.sse", "anthropic"),
    ("gemini_text.sse", "gemini"),
    ("gemini_thinking_tools.sse", "gemini"),
    ("gemini_safety.sse", "gemini"),
    ("gemini_prompt_blocked.sse", "gemini"),
    ("gemini_truncated.sse", "gemini"),
    ("gemini_unavailable.sse", "gemini"),
    ("gemini_grounding.sse", "gemini"),
    ("openai_responses_done_only.sse", "openai-responses"),
    ("openai_responses_encrypted_reasoning.sse", "openai-responses"),
    ("anthropic_redacted_thinking.sse", "anthropic"),
    ("azure_openai_filtered.sse", "azure-openai"),
    ("openai_compatible_reasoning_field.sse", "openai-compatible"),
]


@pytest.mark.parametrize(("name", "provider"), ALL_FIXTURES)
def test_chunking_of_the_bytes_does_not_change_the_outcome(name: str, provider: str) -> None:
    first = play(name, provider, seed=1)
    for seed in range(2, 8):
        again = play(name, provider, seed=seed)
        assert again.chunks == first.chunks
        assert type(again.error) is type(first.error)


@pytest.mark.parametrize(("name", "provider"), ALL_FIXTURES)
def test_errors_name_the_provider_and_endpoint(name: str, provider: str) -> None:
    result = play(name, provider)
    if result.error is not None:
        assert isinstance(result.error, rk.ProviderError)
        assert result.error.provider == provider
        assert result.error.endpoint == "ep-1"
        assert provider in str(result.error)


# --- OpenAI chat completions ----------------------------------------------------------------


def test_openai_text_stream() -> None:
    r = play("openai_chat_text.sse", "openai")
    assert r.error is None
    assert r.text == "Hello! How can I help you today? 😊"
    assert r.finish_reasons == ["stop"]
    assert r.usage == Usage(19, 10, 0, 0, 29)
    # the usage chunk (empty choices) carries only the usage
    assert r.chunks[-1] == StreamChunk(usage=Usage(19, 10, 0, 0, 29))
    assert r.adapter.done
    assert r.adapter.response_id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert r.adapter.model == "gpt-4o-mini-2024-07-18"
    # the opening {"role": "assistant", "content": ""} delta yields no empty chunk
    assert all(c.text or c.finish_reason or c.usage for c in r.chunks)


def test_openai_parallel_tool_calls() -> None:
    r = play("openai_chat_tools.sse", "openai")
    assert r.error is None
    calls = r.tool_calls()
    assert [(c["id"], c["name"]) for c in calls] == [
        ("call_4F1dmXvLwq7e1dHk3SVx2bK9", "get_weather"),
        ("call_Zr2d0W8yQbY1x8hLw6tQy7Ha", "get_time"),
    ]
    assert [json.loads(c["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"tz": "Europe/Paris"},
    ]
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == Usage(1180, 51, 1024, 0, 1231)


def test_openai_error_chunk_mid_stream_is_a_typed_error() -> None:
    r = play("openai_chat_server_error.sse", "openai")
    assert r.text == "The answer is"  # what came before the error was delivered
    assert isinstance(r.error, rk.ServerError)
    assert r.error.status is None  # the HTTP status was 200; no fake status
    assert r.error.code == "server_error"
    assert r.error.retryable and r.error.counts_as_circuit_failure
    assert "The server had an error" in str(r.error)


def test_openai_quota_error_chunk_is_never_retried() -> None:
    r = play("openai_chat_quota_error.sse", "openai")
    assert isinstance(r.error, rk.QuotaExhausted)
    assert not r.error.retryable
    assert not r.error.counts_as_circuit_failure


def test_openai_stream_without_done_is_truncated() -> None:
    r = play("openai_chat_truncated.sse", "openai")
    assert r.text == "Hello! How can I"
    assert isinstance(r.error, rk.StreamTruncated)
    assert r.error.counts_as_circuit_failure
    # lenient OpenAI-compatible mode still needs a finish reason
    compat = play("openai_chat_truncated.sse", "openai-compatible")
    assert isinstance(compat.error, rk.StreamTruncated)


def test_openai_content_filter_raises_after_text_and_usage() -> None:
    r = play("openai_chat_content_filter.sse", "openai")
    assert r.text == "Here is the first part"
    assert r.finish_reasons == ["content_filter"]
    assert r.usage == Usage(31, 6, 0, 0, 37)
    assert isinstance(r.error, rk.ContentFiltered)
    assert r.error.reason == "content_filter"
    assert not r.error.counts_as_circuit_failure


def test_openai_compatible_reasoning_without_done() -> None:
    r = play("openai_compatible_reasoning.sse", "openai-compatible")
    assert r.error is None
    assert r.thinking == "The user greets me."
    assert r.text == "Hi!"
    assert r.finish_reasons == ["stop"]
    assert r.usage == Usage(12, 9, 8, 6, 21)
    # the strict OpenAI adapter insists on [DONE]
    assert isinstance(play("openai_compatible_reasoning.sse", "openai").error, rk.StreamTruncated)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "tokens",
                    "code": "rate_limit_exceeded",
                }
            },
            rk.RateLimited,
        ),
        (
            {
                "error": {
                    "message": "too long",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
            rk.ContextLengthExceeded,
        ),
        (
            {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400},
            rk.BadRequest,
        ),
        ({"error": "upstream exploded"}, rk.StreamError),
        ({"error": {"message": "?", "type": "mystery"}}, rk.StreamError),
    ],
)
def test_openai_error_chunk_shapes(payload: dict[str, Any], expected: type[Exception]) -> None:
    adapter = OpenAIChatAdapter(provider="openai-compatible")
    with pytest.raises(expected) as info:
        adapter.feed(data(payload))
    assert type(info.value) is expected
    assert info.value.provider == "openai-compatible"  # type: ignore[attr-defined]


def test_openai_event_error_with_plain_text() -> None:
    with pytest.raises(rk.StreamError, match="upstream went away"):
        OpenAIChatAdapter().feed(SSEEvent("error", "upstream went away"))


def test_openai_events_after_done_are_ignored() -> None:
    adapter = OpenAIChatAdapter()
    assert adapter.feed(SSEEvent(data="[DONE]")) == []
    assert adapter.feed(data({"choices": [{"delta": {"content": "late"}}]})) == []
    assert adapter.finish() == []


def test_openai_legacy_function_call_and_refusal() -> None:
    adapter = OpenAIChatAdapter()
    chunks = feed_all(
        adapter,
        data(
            {"choices": [{"index": 0, "delta": {"function_call": {"name": "f", "arguments": ""}}}]}
        ),
        data({"choices": [{"index": 0, "delta": {"function_call": {"arguments": "{}"}}}]}),
        data({"choices": [{"index": 0, "delta": {"refusal": "I can't"}}]}),
    )
    assert chunks[0].tool_calls == (ToolCallDelta(0, None, "f", ""),)
    assert chunks[1].tool_calls == (ToolCallDelta(0, None, None, "{}"),)
    assert chunks[2].refusal == "I can't"


def test_openai_several_choices_keep_their_index() -> None:
    chunks = OpenAIChatAdapter().feed(
        data(
            {
                "choices": [
                    {"index": 0, "delta": {"content": "a"}},
                    {"index": 1, "delta": {"content": "b"}},
                ]
            }
        )
    )
    assert [(c.index, c.text) for c in chunks] == [(0, "a"), (1, "b")]


def test_prepare_openai_stream_body_keeps_user_fields() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_obfuscation": False},
        "temperature": 0.2,
    }
    out = prepare_openai_stream_body(body)
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_obfuscation": False, "include_usage": True},
        "temperature": 0.2,
        "stream": True,
    }
    assert body["stream_options"] == {"include_obfuscation": False}  # input untouched
    assert "stream" not in body
    assert prepare_openai_stream_body({"model": "m"})["stream_options"] == {"include_usage": True}


# --- OpenAI Responses API -------------------------------------------------------------------


def test_responses_text_with_reasoning_and_citation() -> None:
    r = play("openai_responses_text.sse", "openai-responses")
    assert r.error is None
    assert r.thinking == "**Greeting the user**\n\nThey said hi."
    assert r.text == "Hi there! 👋"
    citations = [c for chunk in r.chunks for c in chunk.citations]
    assert len(citations) == 1
    assert citations[0].kind == "url_citation"
    assert citations[0].url == "https://en.wikipedia.org/wiki/Greeting"
    assert (citations[0].start_index, citations[0].end_index) == (0, 9)
    assert r.finish_reasons == ["stop"]
    assert r.usage == Usage(36, 87, 0, 64, 123)
    assert r.adapter.response_id == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert r.adapter.model == "o4-mini-2025-04-16"


def test_responses_function_call() -> None:
    r = play("openai_responses_tools.sse", "openai-responses")
    assert r.error is None
    [call] = r.tool_calls()
    assert call["id"] == "call_pmVh2T7wbx3R8cNhJ0aXfK1L"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"location": "Paris, France"}
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == Usage(291, 23, 256, 0, 314)


def test_responses_failed_is_a_typed_error() -> None:
    r = play("openai_responses_failed.sse", "openai-responses")
    assert r.text == "Parti"
    assert isinstance(r.error, rk.ServerError)
    assert "failed to generate" in str(r.error)


def test_responses_error_event_is_classified() -> None:
    r = play("openai_responses_error.sse", "openai-responses")
    assert isinstance(r.error, rk.RateLimited)
    assert r.error.retryable
    assert not r.error.counts_as_circuit_failure


def test_responses_incomplete_is_a_length_stop() -> None:
    r = play("openai_responses_incomplete.sse", "openai-responses")
    assert r.error is None
    assert r.text == "Once upon a time"
    assert r.finish_reasons == ["length"]
    assert r.usage == Usage(12, 16, 0, 0, 28)


def test_responses_truncated() -> None:
    r = play("openai_responses_truncated.sse", "openai-responses")
    assert r.text == "Hi there"
    assert isinstance(r.error, rk.StreamTruncated)


def test_responses_policy_failure_and_content_filter() -> None:
    adapter = stream_adapter_for("openai-responses")
    with pytest.raises(rk.ContentFiltered) as info:
        adapter.feed(
            data(
                {
                    "type": "response.failed",
                    "response": {"error": {"code": "bio_policy", "message": "no"}},
                }
            )
        )
    assert info.value.reason == "bio_policy"
    adapter = stream_adapter_for("openai-responses")
    [chunk] = adapter.feed(
        data(
            {
                "type": "response.incomplete",
                "response": {"incomplete_details": {"reason": "content_filter"}},
            }
        )
    )
    assert chunk.finish_reason == "content_filter"
    with pytest.raises(rk.ContentFiltered):
        adapter.finish()


# --- Anthropic Messages ---------------------------------------------------------------------


def test_anthropic_text_with_cache_usage() -> None:
    r = play("anthropic_text.sse", "anthropic")
    assert r.error is None
    assert r.text == "Hello! I'm Claude, nice to meet you ✨"
    assert r.finish_reasons == ["stop"]
    assert r.chunks[-1].raw_finish_reason == "end_turn"
    # input = uncached 25 + cache read 1800; output from the cumulative message_delta
    assert r.usage == Usage(1825, 15, 1800, 0, 1840, cache_creation_tokens=0)
    assert r.adapter.response_id == "msg_01XFDUDYJgAACzvnptvVoYEL"


def test_anthropic_thinking_signature_and_tool_use() -> None:
    r = play("anthropic_thinking_tools.sse", "anthropic")
    assert r.error is None
    assert r.thinking == "The user wants the weather in Paris; I should call get_weather."
    assert r.signature == "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    assert r.text == "Let me check that for you."
    [call] = r.tool_calls()
    assert call["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"location": "Paris, France", "unit": "celsius"}
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == Usage(472, 89)


def test_anthropic_citations() -> None:
    r = play("anthropic_citations.sse", "anthropic")
    assert r.error is None
    assert r.text == "According to the document, the grass is green."
    [citation] = [c for chunk in r.chunks for c in chunk.citations]
    assert citation.kind == "char_location"
    assert citation.cited_text == "The grass is green. "
    assert citation.title == "Nature facts"
    assert (citation.start_index, citation.end_index) == (0, 20)
    assert citation.raw["document_index"] == 0
    assert r.usage == Usage(3020, 31, 0, 0, 3051, cache_creation_tokens=1500)


def test_anthropic_overloaded_error_event() -> None:
    r = play("anthropic_overloaded.sse", "anthropic")
    assert r.text == "Sure, here"
    assert isinstance(r.error, rk.Overloaded)
    assert r.error.code == "overloaded_error"
    assert r.error.retryable and r.error.counts_as_circuit_failure


@pytest.mark.parametrize(
    ("etype", "expected"),
    [
        ("overloaded_error", rk.Overloaded),
        ("rate_limit_error", rk.RateLimited),
        ("api_error", rk.ServerError),
        ("timeout_error", rk.ServerError),
        ("invalid_request_error", rk.BadRequest),
        ("authentication_error", rk.Unauthorized),
        ("permission_error", rk.Forbidden),
        ("not_found_error", rk.NotFound),
        ("billing_error", rk.QuotaExhausted),
        ("request_too_large", rk.BadRequest),
        ("brand_new_error", rk.StreamError),
    ],
)
def test_anthropic_error_types(etype: str, expected: type[Exception]) -> None:
    adapter = AnthropicAdapter(endpoint="claude")
    event = data({"type": "error", "error": {"type": etype, "message": "m"}}, "error")
    with pytest.raises(expected) as info:
        adapter.feed(event)
    assert type(info.value) is expected
    assert info.value.provider == "anthropic"  # type: ignore[attr-defined]
    assert info.value.endpoint == "claude"  # type: ignore[attr-defined]


def test_anthropic_truncated_mid_event() -> None:
    r = play("anthropic_truncated.sse", "anthropic")
    assert r.text == "The first three"
    assert isinstance(r.error, rk.StreamTruncated)


def test_anthropic_refusal() -> None:
    r = play("anthropic_refusal.sse", "anthropic")
    assert r.text == "I can"
    assert r.finish_reasons == ["content_filter"]
    assert isinstance(r.error, rk.ContentFiltered)
    assert r.error.reason == "refusal"


def test_anthropic_message_delta_usage_is_cumulative_not_added() -> None:
    adapter = AnthropicAdapter()
    feed_all(
        adapter,
        data(
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 10, "output_tokens": 1}},
            }
        ),
        data({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 5}}),
        data(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens"},
                "usage": {"output_tokens": 9},
            }
        ),
        data({"type": "message_stop"}),
    )
    assert adapter.usage == Usage(10, 9)
    assert adapter.finish_reason == "length"
    assert adapter.finish() == []


def test_anthropic_server_tool_input_is_not_a_client_tool_call() -> None:
    adapter = AnthropicAdapter()
    chunks = feed_all(
        adapter,
        data(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                },
            }
        ),
        data(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'},
            }
        ),
        data(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "mine", "input": {}},
            }
        ),
        data(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            }
        ),
    )
    calls = [d for c in chunks for d in c.tool_calls]
    assert calls == [ToolCallDelta(0, "toolu_1", "mine", ""), ToolCallDelta(0, None, None, "{}")]


def test_anthropic_unknown_events_and_ping_are_skipped() -> None:
    adapter = AnthropicAdapter()
    assert adapter.feed(data({"type": "ping"}, "ping")) == []
    assert adapter.feed(data({"type": "some_future_event", "x": 1}, "some_future_event")) == []


# --- Gemini ---------------------------------------------------------------------------------


def test_gemini_text_crlf_stream() -> None:
    raw = (FIXTURES / "gemini_text.sse").read_bytes()
    assert b"\r\n\r\n" in raw  # Gemini frames events with CRLF
    r = play("gemini_text.sse", "gemini")
    assert r.error is None
    assert r.text == (
        "The sky looks blue because of Rayleigh scattering: shorter wavelengths scatter more. 🌤"
    )
    assert r.finish_reasons == ["stop"]
    assert r.usage == Usage(8, 17, 0, 0, 25)
    assert r.adapter.model == "gemini-2.5-flash"


def test_gemini_thoughts_function_call_and_usage() -> None:
    r = play("gemini_thinking_tools.sse", "gemini")
    assert r.error is None
    assert r.thinking == "**Planning the call**\nThe user wants the weather in Paris."
    assert r.text == ""
    [call] = r.tool_calls()
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"location": "Paris", "unit": "celsius"}
    # A signature on a functionCall part belongs to that call: it goes back in the same part.
    assert call["signature"] == "CiQB0e2Kb2sNVgA1x7Lq9eNd+Yc="
    assert r.signature == ""
    assert r.finish_reasons == ["tool_calls"]
    # thoughts count as output (and as reasoning), cached content is part of the input
    assert r.usage == Usage(65, 96, 32, 78, 161)


def test_gemini_safety_stop_is_content_filtered() -> None:
    r = play("gemini_safety.sse", "gemini")
    assert r.text == "Here is how you"
    assert r.finish_reasons == ["content_filter"]
    assert r.usage == Usage(12, 4, 0, 0, 16)
    assert isinstance(r.error, rk.ContentFiltered)
    assert r.error.reason == "SAFETY"
    assert not r.error.retryable


@pytest.mark.parametrize(
    "reason", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"]
)
def test_gemini_policy_finish_reasons(reason: str) -> None:
    adapter = GeminiAdapter()
    adapter.feed(data({"candidates": [{"content": {"parts": []}, "finishReason": reason}]}))
    with pytest.raises(rk.ContentFiltered) as info:
        adapter.finish()
    assert info.value.reason == reason


def test_gemini_blocked_prompt() -> None:
    r = play("gemini_prompt_blocked.sse", "gemini")
    assert r.text == ""
    assert r.usage == Usage(9, 0, 0, 0, 9)
    assert isinstance(r.error, rk.ContentFiltered)
    assert r.error.reason == "PROHIBITED_CONTENT"


def test_gemini_eof_without_finish_reason_is_truncated() -> None:
    r = play("gemini_truncated.sse", "gemini")
    assert r.text == "Once upon a time"
    assert isinstance(r.error, rk.StreamTruncated)


def test_gemini_error_event() -> None:
    r = play("gemini_unavailable.sse", "gemini")
    assert r.text == "Let me"
    assert isinstance(r.error, rk.ServerError)
    assert r.error.status is None
    assert "overloaded" in str(r.error)


def test_gemini_max_tokens_and_unchanged_usage() -> None:
    adapter = GeminiAdapter()
    usage = {"promptTokenCount": 3, "totalTokenCount": 3}
    first = adapter.feed(
        data({"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": usage})
    )
    second = adapter.feed(
        data({"candidates": [{"content": {"parts": [{"text": "b"}]}}], "usageMetadata": usage})
    )
    assert first[0].usage == Usage(3, 0, 0, 0, 3)
    assert second[0].usage is None  # unchanged usage is not repeated
    [last] = adapter.feed(
        data({"candidates": [{"content": {"parts": []}, "finishReason": "MAX_TOKENS"}]})
    )
    assert last.finish_reason == "length"
    assert adapter.finish() == []


# --- shared behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "provider", ["openai", "openai-compatible", "openai-responses", "anthropic", "gemini"]
)
@pytest.mark.parametrize("payload", ['{"choices": [', "not json at all", "", "42", "[1, 2]"])
def test_malformed_event_data_is_a_stream_error(provider: str, payload: str) -> None:
    adapter = stream_adapter_for(provider, endpoint="e")
    with pytest.raises(rk.StreamError) as info:
        adapter.feed(SSEEvent("message_start" if provider == "anthropic" else "message", payload))
    assert type(info.value) is rk.StreamError
    assert info.value.provider == provider
    assert info.value.code == "malformed_event"
    assert info.value.__cause__ is None  # no raw ValueError chained into logs


def test_unknown_provider() -> None:
    with pytest.raises(rk.ConfigError, match="unknown provider 'cohere'"):
        stream_adapter_for("cohere")


def test_classify_stream_error_keeps_status_empty_and_recognises_numeric_codes() -> None:
    err = classify_stream_error({"error": {"code": 429, "message": "slow down", "status": "x"}})
    assert isinstance(err, rk.RateLimited)
    assert err.status is None
    assert "HTTP" not in str(err)
    assert isinstance(classify_stream_error('{"error": {"type": "server_error"}}'), rk.ServerError)
    assert type(classify_stream_error("garbage")) is rk.StreamError


# --- regressions found by replaying recorded provider traffic ------------------------------


def test_responses_values_sent_only_in_done_events_are_not_lost() -> None:
    # LM Studio sends a call's arguments only in function_call_arguments.done and
    # output_item.done; a text's last words may also come only in output_text.done.
    r = play("openai_responses_done_only.sse", "openai-responses")
    assert r.error is None
    assert r.thinking == "Need the weather tool."
    assert r.text == "Checking Oslo now."
    [call] = r.tool_calls()
    assert call["id"] == "call_local_1" and call["name"] == "weather"
    assert call["arguments"] == '{"city":"Oslo","unit":"celsius"}'
    assert r.finish_reasons == ["tool_calls"]
    assert r.usage == Usage(40, 22, 0, 6, 62)


def test_responses_done_events_never_repeat_what_the_deltas_said() -> None:
    r = play("openai_responses_tools.sse", "openai-responses")
    deltas = [d.arguments_delta for c in r.chunks for d in c.tool_calls if d.arguments_delta]
    assert "".join(deltas) == r.tool_calls()[0]["arguments"]
    json.loads(r.tool_calls()[0]["arguments"])  # one JSON document, not two glued together


def test_responses_encrypted_reasoning_is_carried_as_redacted_thinking() -> None:
    # The server encrypts the item afresh each time it sends it; the final response's copy
    # is the one to send back (what the SDK's final response holds).
    r = play("openai_responses_encrypted_reasoning.sse", "openai-responses")
    assert r.error is None
    assert [c.redacted_thinking for c in r.chunks if c.redacted_thinking] == ["gAAAAA-final-copy"]
    assert r.thinking == "Plan the answer." and r.text == "Done."
    assert r.chunks[-1].finish_reason == "stop"  # delivered before the finish


def test_anthropic_redacted_thinking_and_thinking_tokens() -> None:
    r = play("anthropic_redacted_thinking.sse", "anthropic")
    assert r.error is None
    blocks = [c.redacted_thinking for c in r.chunks if c.redacted_thinking]
    assert blocks == [
        "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",
        "EnoKAhgBEgyGl1gFR4UFZ9MjeAoaDGCHFGPvprRZrfCeJCIw6SWbqTrTv0uH",
    ]
    assert r.text == "Here is my answer."
    # output_tokens_details.thinking_tokens is the reasoning part of the output
    assert r.usage == Usage(55, 140, 0, 121, 195)
    done = rk.Completion.from_chunks(r.chunks, endpoint="e", attempts=1)
    assert done.redacted_thinking == tuple(blocks)
    assert done.usage is not None and done.usage.reasoning_tokens == 121


def test_anthropic_usage_reaches_the_caller_before_a_midstream_error() -> None:
    r = play("anthropic_overloaded.sse", "anthropic")
    assert isinstance(r.error, rk.Overloaded)
    assert r.usage == Usage(30, 1, 0, 0, 31)  # from message_start, before the text


def test_gemini_grounding_supports_become_citations() -> None:
    r = play("gemini_grounding.sse", "gemini")
    assert r.error is None
    assert r.text == "Oslo is 12°C and cloudy today."
    cited = [(c.kind, c.cited_text, c.url, c.start_index, c.end_index) for c in r.citations]
    assert cited == [
        ("grounding", "Oslo is 12°C", "https://example.org/oslo-weather", 0, 13),
        ("grounding", "Oslo is 12°C", "https://example.net/forecast", 0, 13),
        ("grounding", "and cloudy today.", "https://example.net/forecast", 14, 31),
    ]


def test_azure_content_filter_names_the_filtered_category() -> None:
    r = play("azure_openai_filtered.sse", "azure-openai")
    assert r.text == "The battle began"
    assert r.finish_reasons == ["content_filter"]
    assert r.usage == Usage(20, 4, 0, 0, 24)  # delivered before the error
    assert isinstance(r.error, rk.ContentFiltered)
    assert r.error.reason == "violence"
    assert r.error.provider == "azure-openai"
    # the same bytes read as plain OpenAI: filtered, but without the category
    plain = play("azure_openai_filtered.sse", "openai")
    assert isinstance(plain.error, rk.ContentFiltered) and plain.error.reason == "content_filter"


def test_azure_prompt_filter_results_marked_filtered_stop_the_stream() -> None:
    adapter = stream_adapter_for("azure-openai")
    verdict = {"jailbreak": {"filtered": True, "detected": True}}
    adapter.feed(
        data({"choices": [], "prompt_filter_results": [{"content_filter_results": verdict}]})
    )
    adapter.feed(SSEEvent(data="[DONE]"))
    with pytest.raises(rk.ContentFiltered) as info:
        adapter.finish()
    assert info.value.reason == "jailbreak"


@pytest.mark.parametrize(
    "name", ["openai_compatible_reasoning.sse", "openai_compatible_reasoning_field.sse"]
)
def test_only_the_compatible_profile_reads_reasoning_fields(name: str) -> None:
    compat = play(name, "openai-compatible")
    assert compat.error is None and compat.thinking and compat.text
    # OpenAI's own API streams no reasoning text: the "openai" provider ignores the fields
    # (and, strict, wants [DONE], which neither server sent)
    plain = play(name, "openai")
    assert plain.thinking == ""
    assert isinstance(plain.error, rk.StreamTruncated)


def test_compatible_reasoning_field_named_reasoning() -> None:
    r = play("openai_compatible_reasoning_field.sse", "openai-compatible")
    assert r.thinking == "Short question, short answer."
    assert r.text == "Four."
    assert r.usage == Usage(15, 9, 0, 6, 24)
