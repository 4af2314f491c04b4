"""aiter_sse: the Trio adaptor's read-gap timeout, cancellation and httpx integration.

All timing runs on ``MockClock(autojump_threshold=0)``: sleeps jump straight to their deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio import SSEDecoder, SSEEvent
from rakka_trio._call._sse_trio import aiter_sse

pytestmark = pytest.mark.trio


class Source:
    """Yields ``(delay, bytes)`` steps, sleeping before each; records whether it was closed."""

    def __init__(self, steps: list[tuple[float, bytes]]) -> None:
        self.steps = steps
        self.closed = False
        self.reads = 0

    async def gen(self) -> AsyncIterator[bytes]:
        try:
            for delay, data in self.steps:
                await trio.sleep(delay)
                self.reads += 1
                yield data
        finally:
            self.closed = True


async def collect(stream: AsyncIterator[SSEEvent]) -> list[SSEEvent]:
    return [ev async for ev in stream]


async def test_events_across_reads(mock_clock: trio.testing.MockClock) -> None:
    src = Source([(0, b"data: a\n"), (1, b"\ndata: "), (1, b"b\n\n"), (1, b"data: c")])
    events = await collect(aiter_sse(src.gen(), read_gap=5))
    assert events == [SSEEvent(data="a"), SSEEvent(data="b")]  # "c" never ended: discarded
    assert src.closed


async def test_read_gap_timeout(mock_clock: trio.testing.MockClock) -> None:
    src = Source([(0, b"data: a\n\n"), (10, b"data: b\n\n")])
    got: list[SSEEvent] = []
    start = trio.current_time()
    with pytest.raises(rk.Timeout) as info:
        async for ev in aiter_sse(src.gen(), read_gap=5, provider="openai", endpoint="p"):
            got.append(ev)
    assert got == [SSEEvent(data="a")]
    assert info.value.phase == "read_gap"
    assert info.value.provider == "openai"
    assert info.value.endpoint == "p"
    assert info.value.counts_as_circuit_failure
    assert trio.current_time() - start == pytest.approx(5)


async def test_read_gap_is_per_read_not_total(mock_clock: trio.testing.MockClock) -> None:
    # 20 reads 4 s apart: 80 s in total, never a 5 s gap.
    src = Source([(4, b"data: %d\n\n" % i) for i in range(20)])
    events = await collect(aiter_sse(src.gen(), read_gap=5))
    assert [e.data for e in events] == [str(i) for i in range(20)]


async def test_slow_consumer_does_not_count_as_a_gap(mock_clock: trio.testing.MockClock) -> None:
    src = Source([(0, b"data: a\n\n"), (0, b"data: b\n\n"), (0, b"data: c\n\n")])
    seen = []
    async for ev in aiter_sse(src.gen(), read_gap=1):
        seen.append(ev.data)
        await trio.sleep(60)  # the consumer dawdles; the server is not late
    assert seen == ["a", "b", "c"]


async def test_no_read_gap_waits_forever(mock_clock: trio.testing.MockClock) -> None:
    src = Source([(3600, b"data: late\n\n")])
    assert await collect(aiter_sse(src.gen())) == [SSEEvent(data="late")]


async def test_outer_cancellation_is_not_turned_into_a_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    src = Source([(0, b"data: a\n\n"), (100, b"data: b\n\n")])
    got = []
    with trio.move_on_after(3) as outer:
        async for ev in aiter_sse(src.gen(), read_gap=50):
            got.append(ev.data)
    assert outer.cancelled_caught
    assert got == ["a"]


async def test_cancellation_reaches_the_caller_while_waiting() -> None:
    never: trio.MemoryReceiveChannel[bytes]
    _send, never = trio.open_memory_channel[bytes](0)
    with trio.CancelScope() as scope:
        scope.cancel()
        # Were Cancelled caught or converted (say into Timeout), it would escape this scope.
        await aiter_sse(never, read_gap=10).__anext__()
    assert scope.cancelled_caught


async def test_async_with_closes_the_source_when_left_early(
    mock_clock: trio.testing.MockClock,
) -> None:
    src = Source([(0, b"data: %d\n\n" % i) for i in range(10)])
    async with aiter_sse(src.gen(), read_gap=5) as events:
        async for ev in events:
            if ev.data == "2":
                break
    assert src.closed
    assert src.reads == 3


async def test_custom_decoder_is_used(mock_clock: trio.testing.MockClock) -> None:
    src = Source([(0, b"data: tail")])
    events = await collect(aiter_sse(src.gen(), decoder=SSEDecoder(lenient_eof=True)))
    assert events == [SSEEvent(data="tail")]
    src = Source([(0, b"data: " + b"x" * 100 + b"\n\n")])
    with pytest.raises(rk.EventTooLarge):
        await collect(aiter_sse(src.gen(), decoder=SSEDecoder(max_event_size=50)))


async def test_invalid_read_gap() -> None:
    with pytest.raises(ValueError):
        aiter_sse(Source([]).gen(), read_gap=0)


def _client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, base_url="http://test")


async def test_httpx_response_source() -> None:
    body = [b"event: message_start\r\ndata: {}\r", b"\n\r\n", b"data: \xe2\x9c", b"\x93\n\n"]

    async def stream() -> AsyncIterator[bytes]:
        for part in body:
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())

    async with (
        _client(httpx.MockTransport(handler)) as client,
        client.stream("POST", "/v1/messages") as resp,
    ):
        events = await collect(aiter_sse(resp, read_gap=5))
    assert events == [SSEEvent("message_start", "{}"), SSEEvent(data="✓")]


async def test_httpx_transport_errors_become_typed_errors() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"data: a\n\n"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    async def slow() -> AsyncIterator[bytes]:
        yield b"data: a\n\n"
        raise httpx.ReadTimeout("timed out")

    got: list[str] = []
    with pytest.raises(rk.NetworkError) as net:
        async for ev in aiter_sse(broken(), provider="anthropic"):
            got.append(ev.data)
    assert got == ["a"]
    assert net.value.provider == "anthropic"
    assert isinstance(net.value.__cause__, httpx.RemoteProtocolError)
    with pytest.raises(rk.Timeout) as tmo:
        await collect(aiter_sse(slow()))
    assert tmo.value.phase == "read_gap"
