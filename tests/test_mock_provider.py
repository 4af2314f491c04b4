"""The loopback mock provider, on real sockets (127.0.0.1, port 0) with the real clock.

Each test bounds itself with ``trio.fail_after``; waiting for the server to notice something
polls a condition (never a bare sleep standing in for an assertion). Streams are parsed with
rakka-trio's own SSE decoder and error bodies classified with ``classify_http_status``, so the
shapes are checked against what the rest of the library understands.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import h11
import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import rakka_trio as rk
from rakka_trio.testing import (
    Fault,
    MockProvider,
    MockRateLimits,
    MockServer,
    MockServerLimits,
    serve_mock_provider,
)
from rakka_trio.testing._faults import FaultPlan
from rakka_trio.testing._plan import go_duration, split_text

pytestmark = pytest.mark.trio

KEY = "sk-mock-test-0123456789abcdef"
NEW_KEY = "sk-mock-rotated-9876543210fedcba"
REPLY = "Hello from the mock provider."
PROMPT = "please say hello to me"  # 5 words: the mock's input token count
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
RESPONSES = {"model": "gpt-4.1-mini", "input": PROMPT}
CLAUDE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": PROMPT}],
}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
BODIES: dict[str, dict[str, Any]] = {
    "openai": CHAT,
    "openai-responses": RESPONSES,
    "anthropic": CLAUDE,
    "gemini": GEMINI,
}
ALL_ROUTES = ["openai", "openai-responses", "anthropic", "gemini"]


# --- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def serving(mock: MockProvider) -> AsyncIterator[MockServer]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_mock_provider, mock)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def client() -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not intercept loopback calls.
    return httpx.AsyncClient(trust_env=False, timeout=10.0)


def auth(route: str, key: str = KEY) -> dict[str, str]:
    if route == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if route == "gemini":
        return {"x-goog-api-key": key}
    return {"authorization": f"Bearer {key}"}


def request_body(route: str, *, stream: bool, **extra: Any) -> dict[str, Any]:
    body = dict(BODIES[route]) | extra
    if route != "gemini":
        body["stream"] = stream
    if route == "openai" and stream:
        body.setdefault("stream_options", {"include_usage": True})
    return body


async def call(
    c: httpx.AsyncClient,
    mock: MockProvider,
    route: str,
    *,
    stream: bool = True,
    key: str | None = KEY,
    **extra: Any,
) -> httpx.Response:
    url = mock.url_for(route, stream=stream)  # type: ignore[arg-type]
    headers = auth(route, key) if key is not None else auth(route, "")
    if key is None:
        headers = {k: v for k, v in headers.items() if k == "anthropic-version"}
    return await c.post(url, headers=headers, json=request_body(route, stream=stream, **extra))


def sse(body: bytes) -> list[rk.SSEEvent]:
    dec = rk.SSEDecoder()
    return dec.feed(body) + dec.close()


def datas(body: bytes) -> list[Any]:
    return [json.loads(e.data) for e in sse(body) if e.data != "[DONE]"]


def classify(response: httpx.Response) -> rk.ProviderError:
    return rk.classify_http_status(response.status_code, dict(response.headers), response.content)


def raw_post(path: str, body: object, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def raw_exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``; read until EOF. Returns what arrived and whether it ended in a reset."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    reset = False
    try:
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:
        reset = True
    finally:
        await stream.aclose()
    return bytes(received), reset


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Complete HTTP responses in ``data`` (as a client would read them)."""
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]
    )
    conn.send(request)
    conn.send(h11.EndOfMessage())
    out: list[tuple[int, dict[str, str], bytes]] = []
    conn.receive_data(data)
    status, headers, body = 0, {}, bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((status, headers, bytes(body)))
            body = bytearray()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return out
            conn.start_next_cycle()
            conn.send(request)
            conn.send(h11.EndOfMessage())
        else:
            return out


# --- streaming and non-streaming shapes per route --------------------------------------------


async def test_openai_chat_stream_with_usage() -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "openai")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    events = sse(r.content)
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {"gpt-4o-mini"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert len(texts) == 4 and "".join(texts) == REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"][0]["delta"] == {}
    # include_usage: every chunk but the last has "usage": null, the last has no choices.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (5, 5, 10)


async def test_openai_chat_stream_without_include_usage_has_no_usage() -> None:
    mock = MockProvider(chunks=2)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("openai"), json=CHAT | {"stream": True})
    chunks = datas(r.content)
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert sse(r.content)[-1].data == "[DONE]"


async def test_openai_chat_non_stream() -> None:
    mock = MockProvider(reply=REPLY, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "openai", stream=False)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": REPLY,
        "refusal": None,
        "annotations": [],
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == 10


async def test_responses_stream_events() -> None:
    mock = MockProvider(reply=REPLY, chunks=3, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "openai-responses")
    events = sse(r.content)
    payloads = [json.loads(e.data) for e in events]
    # The SSE event name always equals the payload's type, and sequence numbers count up.
    assert [e.event for e in events] == [p["type"] for p in payloads]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    kinds = [p["type"] for p in payloads]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [p["delta"] for p in payloads if p["type"] == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    final = payloads[-1]["response"]
    assert final["status"] == "completed" and final["id"].startswith("resp_")
    assert final["output"][0]["content"][0]["text"] == REPLY
    assert final["usage"]["input_tokens"] == 5
    assert final["usage"]["output_tokens"] == 5
    assert final["usage"]["total_tokens"] == 10
    assert "[DONE]" not in r.text


async def test_responses_non_stream() -> None:
    mock = MockProvider(reply=REPLY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("openai-responses"), json=RESPONSES)
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["type"] == "message"
    assert body["output"][0]["content"][0] == {
        "type": "output_text",
        "text": REPLY,
        "annotations": [],
        "logprobs": [],
    }
    assert body["usage"]["input_tokens"] == 5 and body["usage"]["output_tokens"] == 5


async def test_anthropic_stream_events() -> None:
    mock = MockProvider(reply=REPLY, chunks=3, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "anthropic")
    events = sse(r.content)
    payloads = [json.loads(e.data) for e in events]
    assert [e.event for e in events] == [p["type"] for p in payloads]
    assert [p["type"] for p in payloads] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = payloads[0]["message"]
    assert start["id"].startswith("msg_01") and start["model"] == "claude-sonnet-4-5"
    assert start["stop_reason"] is None and start["content"] == []
    assert start["usage"]["input_tokens"] == 5 and start["usage"]["output_tokens"] == 1
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    assert "".join(d["text"] for d in deltas) == REPLY
    message_delta = payloads[-2]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 5  # cumulative
    assert message_delta["usage"]["input_tokens"] == 5


async def test_anthropic_non_stream_and_thinking() -> None:
    mock = MockProvider(reply=REPLY, chunks=2, thinking="one two three four", api_key=KEY)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            plain = await call(c, mock, "anthropic", stream=False)
            streamed = await call(c, mock, "anthropic", thinking=thinking)
            unary = await call(c, mock, "anthropic", stream=False, thinking=thinking)
    body = plain.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": REPLY}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] == 5 and body["usage"]["output_tokens"] == 5

    payloads = datas(streamed.content)
    blocks = [p["content_block"]["type"] for p in payloads if p["type"] == "content_block_start"]
    assert blocks == ["thinking", "text"]
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    thought = "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta")
    assert thought == "one two three four"
    assert [d["type"] for d in deltas].count("signature_delta") == 1
    assert all(p["index"] == 1 for p in payloads if p.get("delta", {}).get("type") == "text_delta")
    assert payloads[-2]["usage"]["output_tokens"] == 4 + 5  # thinking counts as output

    content = unary.json()["content"]
    assert [b["type"] for b in content] == ["thinking", "text"]
    assert content[0]["thinking"] == "one two three four" and content[0]["signature"]


async def test_gemini_sse_stream() -> None:
    mock = MockProvider(reply=REPLY, chunks=3, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "gemini")
    assert r.headers["content-type"].startswith("text/event-stream")
    # Google frames events with CRLF line ends.
    assert r.content.endswith(b"\r\n\r\n") and b"\n\n" not in r.content.replace(b"\r\n", b"")
    payloads = datas(r.content)
    texts = [
        part["text"]
        for p in payloads
        for part in p["candidates"][0].get("content", {}).get("parts", [])
    ]
    assert "".join(texts) == REPLY
    assert all("finishReason" not in p["candidates"][0] for p in payloads[:-1])
    last = payloads[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["promptTokenCount"] == 5
    assert last["usageMetadata"]["candidatesTokenCount"] == 5
    assert last["usageMetadata"]["totalTokenCount"] == 10
    assert {p["modelVersion"] for p in payloads} == {"gemini-2.0-flash"}


async def test_gemini_unary_and_json_array_stream() -> None:
    mock = MockProvider(reply=REPLY, chunks=2)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            unary = await c.post(mock.url_for("gemini", stream=False), json=GEMINI)
            url = f"{mock.url}/v1beta/models/gemini-2.5-pro:streamGenerateContent"
            array = await c.post(url, json=GEMINI)
    body = unary.json()
    assert body["candidates"][0]["content"] == {"parts": [{"text": REPLY}], "role": "model"}
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["usageMetadata"]["totalTokenCount"] == 10
    # Without alt=sse the stream is one JSON array.
    items = json.loads(array.content)
    assert isinstance(items, list) and len(items) == 3
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert items[0]["modelVersion"] == "gemini-2.5-pro"


async def test_gemini_thoughts() -> None:
    mock = MockProvider(reply=REPLY, chunks=2, thinking="a b c")
    config = {"thinkingConfig": {"includeThoughts": True}}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("gemini"), json=GEMINI | {"generationConfig": config})
    payloads = datas(r.content)
    parts = [p["candidates"][0].get("content", {}).get("parts", [{}])[0] for p in payloads]
    assert "".join(p["text"] for p in parts if p.get("thought")) == "a b c"
    meta = payloads[-1]["usageMetadata"]
    assert meta["thoughtsTokenCount"] == 3 and meta["candidatesTokenCount"] == 5
    assert meta["totalTokenCount"] == 5 + 5 + 3


async def test_max_tokens_cuts_the_reply() -> None:
    mock = MockProvider(reply="one two three four five six", chunks=8)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            chat = await c.post(mock.url_for("openai"), json=CHAT | {"max_tokens": 2})
            claude = await call(c, mock, "anthropic", stream=False, max_tokens=3)
            resp = await c.post(
                mock.url_for("openai-responses"), json=RESPONSES | {"max_output_tokens": 1}
            )
            gem = await c.post(
                mock.url_for("gemini", stream=False),
                json=GEMINI | {"generationConfig": {"maxOutputTokens": 4}},
            )
    assert chat.json()["choices"][0]["message"]["content"] == "one two"
    assert chat.json()["choices"][0]["finish_reason"] == "length"
    assert claude.json()["stop_reason"] == "max_tokens"
    assert claude.json()["usage"]["output_tokens"] == 3
    assert resp.json()["status"] == "incomplete"
    assert resp.json()["incomplete_details"] == {"reason": "max_output_tokens"}
    assert gem.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"


# --- tool calls ------------------------------------------------------------------------------


async def test_openai_tool_call_deltas() -> None:
    mock = MockProvider(chunks=3, tool_arguments={"city": "Paris", "unit": "celsius"})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("openai"), json=CHAT | {"stream": True, "tools": tools})
            answered = CHAT["messages"] + [  # type: ignore[operator]
                {"role": "assistant", "tool_calls": []},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ]
            after = await c.post(
                mock.url_for("openai"), json=CHAT | {"tools": tools, "messages": answered}
            )
    chunks = datas(r.content)
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert first["id"].startswith("call_") and first["type"] == "function"
    pieces = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(pieces) == 3
    assert json.loads("".join(pieces)) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Once the tool has answered, the model answers in text.
    assert after.json()["choices"][0]["finish_reason"] == "stop"


async def test_anthropic_and_responses_tool_calls() -> None:
    mock = MockProvider(chunks=2, tool_arguments={"q": "x"}, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            claude = await call(
                c, mock, "anthropic", tools=[{"name": "search", "input_schema": {}}]
            )
            resp = await call(
                c,
                mock,
                "openai-responses",
                tools=[{"type": "function", "name": "lookup", "parameters": {}}],
            )
            gem = await call(
                c, mock, "gemini", tools=[{"functionDeclarations": [{"name": "find"}]}]
            )
    payloads = datas(claude.content)
    start = next(p for p in payloads if p["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "search"
    assert start["content_block"]["id"].startswith("toolu_01")
    partial = [p["delta"]["partial_json"] for p in payloads if p["type"] == "content_block_delta"]
    assert json.loads("".join(partial)) == {"q": "x"}
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"

    events = datas(resp.content)
    args = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert json.loads("".join(args)) == {"q": "x"}
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["name"] == "lookup"
    assert item["call_id"].startswith("call_")

    calls = [
        part["functionCall"]
        for p in datas(gem.content)
        for part in p["candidates"][0].get("content", {}).get("parts", [])
        if "functionCall" in part
    ]
    assert calls == [{"name": "find", "args": {"q": "x"}}]


# --- rate-limit headers ----------------------------------------------------------------------


async def test_openai_rate_limit_headers_count_down() -> None:
    limits = MockRateLimits(requests_per_minute=100, tokens_per_minute=1000)
    mock = MockProvider(reply=REPLY, rate_limits=limits, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            first = await call(c, mock, "openai", stream=False)
            second = await call(c, mock, "openai")
    for r in (first, second):
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)", r.headers[name])
        assert r.headers["x-request-id"].startswith("req_")
    assert first.headers["x-ratelimit-remaining-requests"] == "99"
    assert second.headers["x-ratelimit-remaining-requests"] == "98"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 10)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 20)


async def test_anthropic_rate_limit_headers() -> None:
    limits = MockRateLimits(
        requests_per_minute=50,
        tokens_per_minute=5000,
        input_tokens_per_minute=4000,
        output_tokens_per_minute=800,
    )
    mock = MockProvider(reply=REPLY, rate_limits=limits, api_key=KEY)
    before = time.time()
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, "anthropic")
            gem = await call(c, mock, "gemini")
    h = r.headers
    assert h["anthropic-ratelimit-requests-limit"] == "50"
    assert h["anthropic-ratelimit-requests-remaining"] == "49"
    assert h["anthropic-ratelimit-tokens-remaining"] == str(5000 - 10)
    assert h["anthropic-ratelimit-input-tokens-limit"] == "4000"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == str(4000 - 5)
    assert h["anthropic-ratelimit-output-tokens-remaining"] == str(800 - 5)
    assert h["request-id"].startswith("req_")
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        reset = datetime.strptime(h[f"anthropic-ratelimit-{kind}-reset"], "%Y-%m-%dT%H:%M:%SZ")
        stamp = reset.replace(tzinfo=UTC).timestamp()
        assert before <= stamp <= time.time() + 61
    # Gemini sends no rate-limit headers at all.
    assert not any("ratelimit" in name for name in gem.headers)


async def test_enforced_limits_answer_429_until_the_window_resets() -> None:
    limits = MockRateLimits(requests_per_minute=2, window=30.0, enforce=True)
    mock = MockProvider(rate_limits=limits)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            statuses = [(await c.post(mock.url_for("openai"), json=CHAT)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    limited = statuses[-1]
    assert 1 <= int(limited.headers["retry-after"]) <= 30
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert isinstance(classify(limited), rk.RateLimited)


# --- faults ----------------------------------------------------------------------------------


async def test_status_storm_then_recovery() -> None:
    mock = MockProvider(api_key=KEY)
    mock.add_fault("openai", Fault.status(503), times=3)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            statuses = [(await call(c, mock, "openai")).status_code for _ in range(5)]
            other = await call(c, mock, "anthropic")
    assert statuses == [503, 503, 503, 200, 200]
    assert other.status_code == 200  # the rule was for the openai route only
    assert mock.faults[0].remaining == 0 and mock.faults[0].hits == 3
    stats = mock.statistics()
    assert stats.by_fault == {"status": 3}
    assert stats.by_route_outcome["openai"] == {"http_503": 3, "ok": 2}


@pytest.mark.parametrize(
    ("route", "fault", "expected", "status"),
    [
        ("openai", Fault.status(500), rk.ServerError, 500),
        ("openai", Fault.status(502), rk.ServerError, 502),
        ("anthropic", Fault.status(529), rk.Overloaded, 529),
        ("anthropic", Fault.status(503, error_type="overloaded_error"), rk.Overloaded, 503),
        ("gemini", Fault.status(503), rk.ServerError, 503),
        ("openai-responses", Fault.status(500), rk.ServerError, 500),
        ("openai", Fault.unauthorized(), rk.Unauthorized, 401),
        ("anthropic", Fault.unauthorized(), rk.Unauthorized, 401),
        ("gemini", Fault.unauthorized(), rk.Unauthorized, 401),
        ("openai", Fault.insufficient_quota(), rk.QuotaExhausted, 429),
        ("anthropic", Fault.insufficient_quota(), rk.QuotaExhausted, 402),
        ("openai", Fault.rate_limited(retry_after=2.0), rk.RateLimited, 429),
        ("anthropic", Fault.rate_limited(retry_after=2.0), rk.RateLimited, 429),
        ("gemini", Fault.rate_limited(retry_after=2.0), rk.RateLimited, 429),
        ("openai", Fault.content_filter(stage="prompt"), rk.ContentFiltered, 400),
        ("openai-responses", Fault.content_filter(stage="prompt"), rk.ContentFiltered, 400),
        ("openai", Fault.mid_stream_error(0), rk.ServerError, 500),
        ("anthropic", Fault.mid_stream_error(0), rk.Overloaded, 529),
    ],
)
async def test_error_faults_classify(
    route: str, fault: Fault, expected: type[rk.ProviderError], status: int
) -> None:
    mock = MockProvider(api_key=KEY)
    mock.add_fault(route, fault)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await call(c, mock, route, stream=False)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert type(classify(r)) is expected
    if route == "anthropic":
        assert r.json()["type"] == "error" and r.json()["request_id"].startswith("req_")


async def test_rate_limited_hints() -> None:
    mock = MockProvider()
    mock.add_fault("openai", Fault.rate_limited(retry_after=2.0), times=1)
    mock.add_fault("openai", Fault.rate_limited(retry_after=None, retry_after_ms=250), times=1)
    mock.add_fault("openai", Fault.rate_limited(retry_after=30, http_date=True), times=1)
    mock.add_fault("gemini", Fault.rate_limited(retry_after=1.5), times=1)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            seconds = await c.post(mock.url_for("openai"), json=CHAT)
            millis = await c.post(mock.url_for("openai"), json=CHAT)
            dated = await c.post(mock.url_for("openai"), json=CHAT)
            gem = await c.post(mock.url_for("gemini"), json=GEMINI)
    assert seconds.headers["retry-after"] == "2"
    assert rk.parse_retry_after(seconds.headers) == 2.0
    assert seconds.headers["x-ratelimit-remaining-requests"] == "0"
    assert seconds.headers["x-ratelimit-reset-requests"] == "2s"
    assert "retry-after" not in millis.headers
    assert millis.headers["retry-after-ms"] == "250"
    assert rk.parse_retry_after(millis.headers) == 0.25
    assert classify(millis).retry_after == 0.25
    assert email.utils.parsedate_to_datetime(dated.headers["retry-after"]) is not None
    wait = rk.parse_retry_after(dated.headers)
    assert wait is not None and 25 <= wait <= 31
    details = gem.json()["error"]["details"]
    assert details[0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert details[0]["retryDelay"] == "1.5s"
    assert gem.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


async def test_status_fault_extra_headers_and_hints() -> None:
    mock = MockProvider()
    fault = Fault.status(503, headers={"x-should-retry": "false"}, retry_after=3)
    mock.add_fault("*", fault)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("openai"), json=CHAT)
    assert r.headers["x-should-retry"] == "false" and r.headers["retry-after"] == "3"
    err = classify(r)
    assert isinstance(err, rk.ServerError) and err.retryable is False and err.retry_after == 3.0


async def test_slow_first_byte() -> None:
    mock = MockProvider()
    mock.add_fault("openai", Fault.slow_first_byte(0.3), times=1)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            started = trio.current_time()
            slow = await c.post(mock.url_for("openai"), json=CHAT | {"stream": True})
            elapsed = trio.current_time() - started
            # A client with a shorter first-byte budget gives up before anything arrives.
            mock.add_fault("openai", Fault.slow_first_byte(30), times=1)
            with trio.move_on_after(0.2) as gave_up:
                await c.post(mock.url_for("openai"), json=CHAT)
            await mock.wait_for(lambda: mock.requests[-1].outcome == "disconnected")
    assert elapsed >= 0.3  # trio.sleep never returns early
    assert slow.status_code == 200 and sse(slow.content)[-1].data == "[DONE]"
    assert gave_up.cancelled_caught
    assert [r.fault for r in mock.requests] == ["slow_first_byte", "slow_first_byte"]
    assert mock.requests[0].outcome == "ok"


async def test_stalled_stream_does_not_block_other_clients() -> None:
    mock = MockProvider(reply=REPLY, chunks=4)
    mock.add_fault("openai", Fault.stall(after_chunks=2, duration=float("inf")), times=1)
    got: list[str] = []
    with trio.fail_after(10):
        async with serving(mock), client() as stalled_client, client() as other:
            url = mock.url_for("openai")
            async with stalled_client.stream("POST", url, json=CHAT | {"stream": True}) as r:
                dec = rk.SSEDecoder()
                reader = r.aiter_raw()
                while len(got) < 2:
                    for event in dec.feed(await reader.__anext__()):
                        delta = json.loads(event.data)["choices"][0]["delta"]
                        if delta.get("content"):
                            got.append(delta["content"])
                # Another client is served in full while this stream is stalled ...
                ok = await other.post(url, json=CHAT | {"stream": True})
                assert sse(ok.content)[-1].data == "[DONE]"
                # The server books the finished request just after its last byte went out.
                with trio.fail_after(2):
                    await mock.wait_for(lambda: mock.statistics().pending == 1)
                # ... and the stalled stream sends nothing more. (Giving up on the read makes
                # httpx drop the connection, which the server notices below.)
                with trio.move_on_after(0.3) as quiet:
                    await reader.__anext__()
                assert quiet.cancelled_caught
            # Closing the stalled response is noticed and ends the server-side stall.
            await mock.wait_for(lambda: mock.statistics().pending == 0)
    assert "".join(got) == "Hello from the"
    assert mock.requests[0].outcome == "disconnected"
    assert mock.requests[1].outcome == "ok"


async def test_finite_stall_then_complete_stream() -> None:
    mock = MockProvider(reply=REPLY, chunks=3)
    mock.add_fault("*", Fault.stall(after_chunks=1, duration=0.2))
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            started = trio.current_time()
            r = await c.post(
                mock.url_for("anthropic"), headers=auth("anthropic"), json=CLAUDE | {"stream": True}
            )
            unary = await c.post(mock.url_for("openai"), json=CHAT)
            elapsed = trio.current_time() - started
    assert datas(r.content)[-1] == {"type": "message_stop"}
    assert unary.json()["choices"][0]["message"]["content"] == REPLY
    assert elapsed >= 0.4
    assert [r.outcome for r in mock.requests] == ["ok", "ok"]


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_truncated_stream_lacks_terminal_marker(route: str) -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    mock.add_fault(route, Fault.truncate(after_chunks=2), times=1)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with serving(mock) as server, client() as c:
            cut = await call(c, mock, route)
            whole = await call(c, mock, route)  # same (kept-alive) connection, full answer
    assert cut.status_code == 200
    cut_events, whole_events = sse(cut.content), sse(whole.content)
    # What was sent is exactly the head of the complete stream, minus its ending.
    assert len(cut_events) < len(whole_events)
    assert [e.event for e in cut_events] == [e.event for e in whole_events[: len(cut_events)]]
    text = cut.text
    for marker in ("[DONE]", "message_stop", "response.completed", "finishReason"):
        assert marker not in text
    assert server.accepted_connections == 1
    assert [r.outcome for r in mock.requests] == ["truncated", "ok"]


async def test_truncate_with_connection_close_and_non_stream() -> None:
    mock = MockProvider(chunks=4)
    mock.add_fault("openai", Fault.truncate(after_chunks=1, close_connection=True), times=1)
    mock.add_fault("openai", Fault.truncate(after_chunks=0), times=1)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(mock.url_for("openai"), json=CHAT | {"stream": True})
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(mock.url_for("openai"), json=CHAT)  # short Content-Length body
            after = await c.post(mock.url_for("openai"), json=CHAT)
    assert after.status_code == 200
    assert [r.outcome for r in mock.requests] == ["truncated", "truncated", "ok"]


async def test_truncate_after_more_chunks_than_exist_drops_only_the_ending() -> None:
    mock = MockProvider(reply=REPLY, chunks=3)
    mock.add_fault("openai", Fault.truncate(after_chunks=100))
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            r = await c.post(mock.url_for("openai"), json=CHAT | {"stream": True})
    chunks = datas(r.content)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == REPLY
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "[DONE]" not in r.text


async def test_mid_stream_error_per_route() -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    mock.add_fault("*", Fault.mid_stream_error(after_chunks=2))
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            responses = {route: await call(c, mock, route) for route in ALL_ROUTES}
    for r in responses.values():
        assert r.status_code == 200
    openai = datas(responses["openai"].content)
    assert openai[-1] == {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert sum(1 for c in openai if "choices" in c and c["choices"][0]["delta"].get("content")) == 2
    assert "[DONE]" not in responses["openai"].text

    claude = sse(responses["anthropic"].content)
    assert claude[-1].event == "error"
    assert json.loads(claude[-1].data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert "message_stop" not in responses["anthropic"].text

    events = datas(responses["openai-responses"].content)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"

    gem = datas(responses["gemini"].content)
    assert gem[-1]["error"]["status"] == "INTERNAL" and gem[-1]["error"]["code"] == 500
    assert {r.outcome for r in mock.requests} == {"mid_stream_error"}


async def test_mid_stream_error_custom_type() -> None:
    mock = MockProvider(api_key=KEY)
    mock.add_fault("anthropic", Fault.mid_stream_error(1, error_type="api_error", message="boom"))
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            streamed = await call(c, mock, "anthropic")
            unary = await call(c, mock, "anthropic", stream=False)
    assert datas(streamed.content)[-1]["error"] == {"type": "api_error", "message": "boom"}
    assert unary.status_code == 500 and unary.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("route", ALL_ROUTES)
async def test_content_filter_output(route: str) -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    mock.add_fault(route, Fault.content_filter(after_chunks=1))  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            streamed = await call(c, mock, route)
            unary = await call(c, mock, route, stream=False)
    payloads = datas(streamed.content)
    if route == "openai":
        assert payloads[-2]["choices"][0]["finish_reason"] == "content_filter"
        assert unary.json()["choices"][0]["finish_reason"] == "content_filter"
        assert payloads[-1]["usage"]["completion_tokens"] == 2  # "Hello from"
    elif route == "openai-responses":
        assert payloads[-1]["type"] == "response.incomplete"
        assert payloads[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}
        assert unary.json()["status"] == "incomplete"
    elif route == "anthropic":
        assert payloads[-2]["delta"]["stop_reason"] == "refusal"
        assert unary.json()["stop_reason"] == "refusal"
    else:
        last = payloads[-1]["candidates"][0]
        assert last["finishReason"] == "SAFETY" and "content" not in last
        assert any(r.get("blocked") for r in last["safetyRatings"])
        assert unary.json()["candidates"][0]["finishReason"] == "SAFETY"
    assert {r.outcome for r in mock.requests} == {"content_filter"}


async def test_content_filter_prompt_gemini_and_anthropic() -> None:
    mock = MockProvider(api_key=KEY)
    mock.add_fault("*", Fault.content_filter(stage="prompt"))
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            gem = await call(c, mock, "gemini")
            claude = await call(c, mock, "anthropic", stream=False)
    (only,) = datas(gem.content)
    assert gem.status_code == 200 and "candidates" not in only
    assert only["promptFeedback"]["blockReason"] == "SAFETY"
    assert claude.json()["stop_reason"] == "refusal" and claude.json()["content"] == []


async def test_connection_reset_before_any_byte() -> None:
    mock = MockProvider()
    mock.add_fault("openai", Fault.connection_reset(), times=1)
    with trio.fail_after(10):
        async with serving(mock) as server:
            data, reset = await raw_exchange(server.port, raw_post("/v1/chat/completions", CHAT))
            async with client() as c:
                with pytest.raises(httpx.TransportError):
                    mock.add_fault("openai", Fault.connection_reset(), times=1)
                    await c.post(mock.url_for("openai"), json=CHAT)
                after = await c.post(mock.url_for("openai"), json=CHAT)
    assert data == b"" and reset
    assert after.status_code == 200
    assert [r.outcome for r in mock.requests] == ["reset", "reset", "ok"]


async def test_connection_reset_after_bytes() -> None:
    mock = MockProvider(chunks=8)
    mock.add_fault("openai", Fault.connection_reset(after_bytes=300))
    with trio.fail_after(10):
        async with serving(mock) as server:
            request = raw_post("/v1/chat/completions", CHAT | {"stream": True})
            data, reset = await raw_exchange(server.port, request)
    assert reset
    assert len(data) <= 300
    assert data.startswith(b"HTTP/1.1 200 ")
    assert mock.requests[0].outcome == "reset"


# --- rule semantics --------------------------------------------------------------------------


async def test_fault_plan_order_times_window_probability() -> None:
    plan = FaultPlan(random.Random(1))
    a = plan.add("openai", Fault.status(500), times=2)
    b = plan.add("*", Fault.status(503), start=10.0, end=20.0)
    c = plan.add("anthropic", Fault.status(529), probability=0.5)
    # Insertion order: a wins until used up; b only inside its window.
    assert plan.match("openai", 15.0) is a
    assert plan.match("openai", 15.0) is a
    assert a.remaining == 0 and a.exhausted
    assert plan.match("openai", 15.0) is b
    assert plan.match("openai", 9.999) is None
    assert plan.match("openai", 20.0) is None  # end is exclusive
    assert plan.match("gemini", 10.0) is b
    # Probability: reproducible for a seed, roughly the asked-for share, unlimited uses.
    hits = [plan.match("anthropic", 0.0) is c for _ in range(400)]
    again = FaultPlan(random.Random(1))
    c2 = again.add("anthropic", Fault.status(529), probability=0.5)
    assert hits == [again.match("anthropic", 0.0) is c2 for _ in range(400)]
    assert 140 <= sum(hits) <= 260
    assert c.hits == sum(hits) and c.remaining is None
    plan.remove(b)
    assert plan.match("gemini", 15.0) is None
    plan.clear("anthropic")
    assert plan.rules == (a,)


async def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault.status(200)
    with pytest.raises(ValueError):
        Fault.stall(-1, 1.0)
    with pytest.raises(ValueError):
        Fault.slow_first_byte(float("nan"))
    with pytest.raises(ValueError):
        Fault.slow_first_byte(float("inf"))
    with pytest.raises(ValueError):
        Fault.connection_reset(after_bytes=-5)
    mock = MockProvider()
    with pytest.raises(ValueError):
        mock.add_fault("bedrock", Fault.status(500))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mock.add_fault("openai", Fault.status(500), probability=1.5)
    with pytest.raises(ValueError):
        mock.add_fault("openai", Fault.status(500), start=5.0, end=1.0)
    with pytest.raises(ValueError):
        MockProvider(chunks=0)
    with pytest.raises(ValueError):
        MockRateLimits(requests_per_minute=0)


async def test_fault_window_on_the_trio_clock() -> None:
    mock = MockProvider()
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            now = trio.current_time()
            mock.add_fault("openai", Fault.status(500), end=now - 1.0)  # already over
            mock.add_fault("openai", Fault.status(502), start=now + 3600)  # not yet
            mock.add_fault("openai", Fault.status(503), start=now - 1.0, end=now + 3600)
            r = await c.post(mock.url_for("openai"), json=CHAT)
            mock.clear_faults()
            ok = await c.post(mock.url_for("openai"), json=CHAT)
    assert r.status_code == 503 and ok.status_code == 200


async def test_probability_faults_are_reproducible_over_http() -> None:
    async def run(seed: int) -> list[int]:
        mock = MockProvider(seed=seed)
        mock.add_fault("openai", Fault.status(500), probability=0.5)
        async with serving(mock), client() as c:
            return [
                (await c.post(mock.url_for("openai"), json=CHAT)).status_code for _ in range(20)
            ]

    with trio.fail_after(20):
        first, second, other = await run(7), await run(7), await run(8)
    assert first == second
    assert set(first) == {200, 500}
    assert first != other


# --- credentials, recording, statistics ------------------------------------------------------


async def test_key_rotation_per_provider_and_no_key_in_records() -> None:
    mock = MockProvider(api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            before = {route: (await call(c, mock, route)).status_code for route in ALL_ROUTES}
            mock.rotate_key(NEW_KEY)
            stale = {route: await call(c, mock, route) for route in ALL_ROUTES}
            fresh = {
                route: (await call(c, mock, route, key=NEW_KEY)).status_code for route in ALL_ROUTES
            }
            missing = await call(c, mock, "openai", key=None)
            query_key = await c.post(f"{mock.url_for('gemini')}&key={NEW_KEY}", json=GEMINI)
            bearer_for_anthropic = await c.post(
                mock.url_for("anthropic"),
                headers={"authorization": f"Bearer {NEW_KEY}", "anthropic-version": "2023-06-01"},
                json=CLAUDE,
            )
            wrong_header = await c.post(  # OpenAI reads only Authorization
                mock.url_for("openai"), headers={"x-api-key": NEW_KEY}, json=CHAT
            )
            mock.rotate_key(None)
            unchecked = await call(c, mock, "openai", key=None)
    assert set(before.values()) == {200}
    assert {r.status_code for r in stale.values()} == {401}
    for r in stale.values():
        assert type(classify(r)) is rk.Unauthorized
    assert stale["anthropic"].json()["error"]["type"] == "authentication_error"
    assert stale["openai"].json()["error"]["code"] == "invalid_api_key"
    assert stale["gemini"].json()["error"]["status"] == "UNAUTHENTICATED"
    assert set(fresh.values()) == {200}
    assert missing.status_code == 401
    assert query_key.status_code == 200 and bearer_for_anthropic.status_code == 200
    assert wrong_header.status_code == 401
    assert unchecked.status_code == 200
    matched = [r.key_matched for r in mock.requests]
    assert matched == [True] * 4 + [False] * 4 + [True] * 4 + [False, True, True, False, None]
    # No credential anywhere the mock keeps or shows.
    gemini_query = mock.requests[13]
    assert gemini_query.query == {"alt": "sse"} and "key" not in gemini_query.path
    shown = repr(mock.requests) + repr(mock.statistics()) + repr(mock) + repr(mock.faults)
    for secret in (KEY, NEW_KEY):
        assert secret not in shown
        assert secret not in str(vars(mock))


async def test_request_recording() -> None:
    mock = MockProvider()
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            await c.post(mock.url_for("openai"), json=CHAT | {"stream": True}, headers={"x-a": "1"})
            await c.post(mock.url_for("gemini", stream=False), json=GEMINI)
    first, second = mock.requests
    assert (first.route, first.method, first.path) == ("openai", "POST", "/v1/chat/completions")
    assert first.json == CHAT | {"stream": True}
    assert first.stream is True and first.model == "gpt-4o-mini" and first.status == 200
    assert "x-a" in first.header_names and "content-type" in first.header_names
    assert first.key_matched is None and first.fault is None and first.outcome == "ok"
    assert second.route == "gemini" and second.stream is False
    assert second.model == "gemini-2.0-flash"
    assert first.index == 1 and second.index == 2 and first.received_at <= second.received_at
    mock.clear_requests()
    assert mock.requests == [] and mock.statistics().requests == 0


async def test_recording_is_bounded() -> None:
    mock = MockProvider(max_recorded=3)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            for _ in range(5):
                await c.post(mock.url_for("openai"), json=CHAT)
    assert [r.index for r in mock.requests] == [3, 4, 5]
    assert mock.statistics().requests == 5


async def test_unknown_path_method_and_malformed_json() -> None:
    mock = MockProvider(api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            missing = await c.post(f"{mock.url}/v1/embeddings", json={})
            get = await c.get(mock.url_for("openai"))
            bad_json = await c.post(
                mock.url_for("openai"), headers=auth("openai"), content=b'{"model": '
            )
            bad_claude = await c.post(
                mock.url_for("anthropic"), headers=auth("anthropic"), content=b"[1, 2"
            )
            not_object = await c.post(mock.url_for("openai"), headers=auth("openai"), json=[1])
            nested = await c.post(
                mock.url_for("openai"), headers=auth("openai"), content=b"[" * 100_000
            )
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    assert type(classify(missing)) is rk.NotFound
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert bad_json.status_code == 400 and type(classify(bad_json)) is rk.BadRequest
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert bad_claude.status_code == 400 and bad_claude.json()["type"] == "error"
    assert not_object.status_code == 400 and nested.status_code == 400
    stats = mock.statistics()
    assert stats.by_route["unknown"] == 1
    assert stats.by_outcome == {"http_404": 1, "http_405": 1, "http_400": 4}


async def test_strict_validation_matches_the_providers() -> None:
    mock = MockProvider()
    lax = MockProvider(strict=False)
    with trio.fail_after(10):
        async with serving(mock), serving(lax), client() as c:
            no_version = await c.post(mock.url_for("anthropic"), json=CLAUDE)
            no_max = await c.post(
                mock.url_for("anthropic"),
                headers=auth("anthropic"),
                json={k: v for k, v in CLAUDE.items() if k != "max_tokens"},
            )
            options = await c.post(
                mock.url_for("openai"), json=CHAT | {"stream_options": {"include_usage": True}}
            )
            no_contents = await c.post(mock.url_for("gemini"), json={})
            lax_ok = await c.post(lax.url_for("anthropic"), json={"messages": []})
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]
    assert no_max.status_code == 400
    assert options.status_code == 400 and "stream_options" in options.json()["error"]["message"]
    assert no_contents.status_code == 400
    assert no_contents.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert lax_ok.status_code == 200


# --- HTTP behaviour and hostile clients ------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    mock = MockProvider(api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock) as server, client() as c:
            for route in ALL_ROUTES:
                assert (await call(c, mock, route)).status_code == 200
                assert (await call(c, mock, route, stream=False)).status_code == 200
    assert server.accepted_connections == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    mock = MockProvider(reply="a b", chunks=2)
    with trio.fail_after(10):
        async with serving(mock) as server:
            two = raw_post("/v1/chat/completions", CHAT | {"stream": True}) + raw_post(
                "/v1/chat/completions", CHAT, [("connection", "close")]
            )
            data, reset = await raw_exchange(server.port, two)
    assert not reset
    (s1, h1, b1), (s2, _, b2) = parse_responses(data)
    assert (s1, s2) == (200, 200)
    assert h1["transfer-encoding"] == "chunked" and sse(b1)[-1].data == "[DONE]"
    assert json.loads(b2)["choices"][0]["message"]["content"] == "a b"


async def test_expect_100_continue() -> None:
    mock = MockProvider()
    payload = json.dumps(CHAT).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        async with serving(mock) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(head)
                interim = await stream.receive_some(1024)
                await stream.send_all(payload)
                rest = bytearray()
                while chunk := await stream.receive_some(65536):
                    rest += chunk
    assert interim.startswith(b"HTTP/1.1 100 ")
    assert bytes(rest).startswith(b"HTTP/1.1 200 ")


async def test_hostile_clients_leave_the_server_serving() -> None:
    limits = MockServerLimits(
        max_header_bytes=4096, max_body_bytes=1024, keep_alive_timeout=0.3, request_timeout=0.3
    )
    mock = MockProvider(server_limits=limits)
    with trio.fail_after(15):
        async with serving(mock) as server:
            port = server.port
            garbage, _ = await raw_exchange(port, b"\x00\xff not http at all\r\n\r\n")
            huge_head, _ = await raw_exchange(
                port, b"POST / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n"
            )
            huge_body, _ = await raw_exchange(
                port, raw_post("/v1/chat/completions", {"x": "y" * 300_000})
            )
            chunked_flood = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                + b"400\r\n"
                + b"z" * 1024
                + b"\r\n"
                + b"400\r\n"
                + b"z" * 1024
                + b"\r\n"
            )
            flood, _ = await raw_exchange(port, chunked_flood)
            # Slowloris: half a request head, then silence; the server hangs up on its own.
            started = trio.current_time()
            trickle, _ = await raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nho")
            waited = trio.current_time() - started
            # A half-sent body is cut off by the request timeout with a 408.
            partial = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{"
            )
            slow_body, _ = await raw_exchange(port, partial)
            async with client() as c:
                ok = await c.post(mock.url_for("openai"), json=CHAT)
            await mock.wait_for(lambda: server.open_connections == 0)
    assert parse_responses(garbage)[0][0] == 400
    assert parse_responses(huge_head)[0][0] == 431
    assert parse_responses(huge_body)[0][0] == 413
    assert parse_responses(flood)[0][0] == 413
    assert trickle == b"" and waited >= 0.3
    assert parse_responses(slow_body)[0][0] == 408
    assert ok.status_code == 200


async def test_client_that_never_reads_is_cut_off() -> None:
    limits = MockServerLimits(send_timeout=0.3)
    mock = MockProvider(reply="word " * 400_000, chunks=4, server_limits=limits)
    with trio.fail_after(10):
        async with serving(mock) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(raw_post("/v1/chat/completions", CHAT | {"stream": True}))
                # Read nothing: the server's writes fill the socket buffers and then block.
                await mock.wait_for(lambda: mock.statistics().pending == 0)
            await mock.wait_for(lambda: server.open_connections == 0)
    assert mock.requests[0].outcome == "disconnected"


async def test_stopping_the_server_ends_stalled_streams() -> None:
    mock = MockProvider()
    mock.add_fault("openai", Fault.stall(after_chunks=0, duration=float("inf")))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_mock_provider, mock)
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(raw_post("/v1/chat/completions", CHAT | {"stream": True}))
                head = await stream.receive_some(65536)
                assert head.startswith(b"HTTP/1.1 200 ")
                await mock.wait_for(lambda: mock.statistics().pending == 1)
                server.stop()
                rest = bytearray()
                with contextlib.suppress(trio.BrokenResourceError):
                    while chunk := await stream.receive_some(65536):
                        rest += chunk
    # The stalled response never finished: no terminating chunk reached the client.
    assert not bytes(head + rest).endswith(b"0\r\n\r\n")
    assert mock.requests[0].outcome == "disconnected"
    assert mock.statistics().pending == 0


async def test_connection_limit_answers_503() -> None:
    mock = MockProvider(server_limits=MockServerLimits(max_connections=1))
    with trio.fail_after(10):
        async with serving(mock) as server:
            held = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with held:
                await mock.wait_for(lambda: server.open_connections == 1)
                refused, _ = await raw_exchange(server.port, raw_post("/v1/chat/completions", CHAT))
            await mock.wait_for(lambda: server.open_connections == 0)
            async with client() as c:
                ok = await c.post(mock.url_for("openai"), json=CHAT)
    assert parse_responses(refused)[0][0] == 503
    assert ok.status_code == 200


async def test_stop_refuses_new_connections_and_urls() -> None:
    mock = MockProvider()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(mock.serve, "127.0.0.1", 0)
            assert mock.base_url_for("openai") == f"{server.url}/v1"
            assert mock.base_url_for("anthropic") == server.url
            assert mock.base_url_for("gemini") == f"{server.url}/v1beta"
            assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
            server.stop()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", server.port)
    with pytest.raises(RuntimeError):
        _ = mock.url


async def test_two_servers_share_one_script() -> None:
    mock = MockProvider()
    mock.add_fault("openai", Fault.status(500), times=1)
    with trio.fail_after(10):
        async with serving(mock) as a, serving(mock) as b, client() as c:
            first = await c.post(f"{a.url}/v1/chat/completions", json=CHAT)
            second = await c.post(f"{b.url}/v1/chat/completions", json=CHAT)
    assert (first.status_code, second.status_code) == (500, 200)
    assert a.port != b.port


# --- official SDK as an oracle for the OpenAI shapes -----------------------------------------


async def test_openai_sdk_parses_chat_and_responses_streams() -> None:
    openai = pytest.importorskip("openai")
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)

    def use_sdk(base_url: str) -> tuple[str, int, str, int, str]:
        sdk = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)
        text, total = [], 0
        for chunk in sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                total = chunk.usage.total_tokens
        with sdk.responses.stream(model="gpt-4.1-mini", input=PROMPT) as events:
            for _ in events:
                pass
            final = events.get_final_response()
        with sdk.chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        ) as stream:
            for _ in stream:
                pass
            call_args = stream.get_final_completion().choices[0].message.tool_calls[0]
        assert final.usage is not None
        return (
            "".join(text),
            total,
            final.output_text,
            final.usage.total_tokens,
            (call_args.function.arguments),
        )

    with trio.fail_after(30):
        async with serving(mock):
            result = await trio.to_thread.run_sync(use_sdk, mock.base_url_for("openai"))
    assert result == (REPLY, 10, REPLY, 10, json.dumps({"text": REPLY}))


async def test_openai_sdk_raises_on_mid_stream_error_chunk() -> None:
    openai = pytest.importorskip("openai")
    mock = MockProvider(api_key=KEY)
    mock.add_fault("openai", Fault.mid_stream_error(1))

    def use_sdk(base_url: str) -> None:
        sdk = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)
        for _ in sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass

    with trio.fail_after(30):
        async with serving(mock):
            with pytest.raises(openai.APIError, match="The server had an error"):
                await trio.to_thread.run_sync(use_sdk, mock.base_url_for("openai"))


# --- pure helpers ----------------------------------------------------------------------------


@given(st.text(max_size=200), st.integers(min_value=1, max_value=40))
async def test_split_text_preserves_text(text: str, pieces: int) -> None:
    parts = split_text(text, pieces)
    assert "".join(parts) == text
    assert len(parts) == (min(pieces, len(text)) if text else 0)
    assert all(parts)


async def test_split_text_breaks_at_words() -> None:
    assert split_text("Hello from the mock provider.", 3) == (
        "Hello from",
        " the mock",
        " provider.",
    )
    assert split_text("ab", 5) == ("a", "b")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.987, "59.987s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
async def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


# --- Azure OpenAI and the OpenAI-compatible reasoning server ---------------------------------

AZURE_PATH = "/openai/deployments/gpt-4o-prod/chat/completions"


async def test_azure_route_streams_openai_chunks_with_filter_results() -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            url = f"{mock.url}{AZURE_PATH}?api-version=2024-10-21"
            r = await c.post(url, headers={"api-key": KEY}, json=body)
            assert mock.base_url_for("azure-openai") == mock.url
    assert r.status_code == 200
    events = sse(r.content)
    assert events[-1].data == "[DONE]"
    first, *chunks = [json.loads(e.data) for e in events[:-1]]
    # Azure's first chunk: the prompt's filter verdict, no choices, empty id
    assert first["choices"] == [] and first["id"] == ""
    verdict = first["prompt_filter_results"][0]["content_filter_results"]
    assert not any(v["filtered"] for v in verdict.values())
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(t for t in texts if t) == REPLY
    content = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"]]
    assert all("content_filter_results" in choice for choice in content[1:])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 5
    rec = mock.requests[-1]
    assert (rec.route, rec.model, rec.key_matched) == ("azure-openai", "gpt-4o-prod", True)
    # Azure reports what remains, not limits or resets
    assert "x-ratelimit-remaining-requests" in r.headers
    assert "x-ratelimit-limit-requests" not in r.headers


async def test_azure_route_reads_api_key_and_requires_api_version() -> None:
    mock = MockProvider(reply=REPLY, api_key=KEY)
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            versioned = f"{mock.url}{AZURE_PATH}?api-version=2024-10-21"
            bearer = await c.post(versioned, headers={"authorization": f"Bearer {KEY}"}, json=CHAT)
            wrong = await c.post(versioned, headers={"api-key": "nope"}, json=CHAT)
            unversioned = await c.post(
                f"{mock.url}{AZURE_PATH}", headers={"api-key": KEY}, json=CHAT
            )
    assert bearer.status_code == 200  # an Entra ID token works too
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "401"
    err = rk.classify_http_status(401, {}, wrong.content, provider="azure-openai")
    assert isinstance(err, rk.Unauthorized)
    assert unversioned.status_code == 400
    assert "api-version" in unversioned.json()["error"]["message"]


async def test_azure_content_filter_faults() -> None:
    mock = MockProvider(reply=REPLY, chunks=4, api_key=KEY)
    mock.add_fault("azure-openai", Fault.content_filter(stage="prompt"), times=1)
    mock.add_fault("azure-openai", Fault.content_filter(after_chunks=1), times=1)
    body = {**CHAT, "stream": True}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            url = f"{mock.url}{AZURE_PATH}?api-version=2024-10-21"
            prompt = await c.post(url, headers={"api-key": KEY}, json=body)
            output = await c.post(url, headers={"api-key": KEY}, json=body)
    assert prompt.status_code == 400
    error = prompt.json()["error"]
    assert error["code"] == "content_filter"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["hate"]["filtered"] is True
    filtered = rk.classify_http_status(400, {}, prompt.content, provider="azure-openai")
    assert isinstance(filtered, rk.ContentFiltered) and filtered.reason == "hate"
    last_choice = [c for c in datas(output.content) if c["choices"]][-1]["choices"][0]
    assert last_choice["finish_reason"] == "content_filter"
    assert last_choice["content_filter_results"]["violence"]["filtered"] is True


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_compat_route_streams_reasoning_first(field: str) -> None:
    mock = MockProvider(reply=REPLY, chunks=3, api_key=KEY, compat_reasoning_field=field)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            assert mock.base_url_for("openai-compatible") == f"{mock.url}/compat/v1"
            url = mock.url_for("openai-compatible")
            r = await c.post(url, headers=auth("openai-compatible"), json=body)
            unary = await c.post(url, headers=auth("openai-compatible"), json=CHAT)
    assert r.status_code == 200
    assert sse(r.content)[-1].data == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in datas(r.content) if c["choices"]]
    thinking = "".join(d.get(field) or "" for d in deltas)
    text = "".join(d.get("content") or "" for d in deltas)
    assert (thinking, text) == (mock.thinking, REPLY)
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(not d.get(field) for d in deltas[first_text:])  # reasoning comes first
    usage = datas(r.content)[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == len(mock.thinking.split())
    assert unary.json()["choices"][0]["message"][field] == mock.thinking


async def test_compat_route_without_done_and_with_vllm_errors() -> None:
    mock = MockProvider(
        reply=REPLY, api_key=KEY, compat_reasoning_field=None, compat_sends_done=False
    )
    mock.add_fault("openai-compatible", Fault.status(400, message="bad top_k"), times=1)
    body = {**CHAT, "stream": True}
    with trio.fail_after(10):
        async with serving(mock), client() as c:
            url = mock.url_for("openai-compatible")
            bad = await c.post(url, headers=auth("openai-compatible"), json=body)
            ok = await c.post(url, headers=auth("openai-compatible"), json=body)
    assert bad.status_code == 400
    assert bad.json() == {
        "object": "error",
        "message": "bad top_k",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    assert isinstance(classify(bad), rk.BadRequest)
    events = sse(ok.content)
    assert events and all(e.data != "[DONE]" for e in events)
    deltas = [c["choices"][0] for c in datas(ok.content) if c["choices"]]
    assert deltas[-1]["finish_reason"] == "stop"
    assert not any("reasoning_content" in d["delta"] for d in deltas)
