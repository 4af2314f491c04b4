"""Endpoint.stream / Endpoint.complete against the loopback mock provider on real sockets.

Real sockets need the real clock (MockClock would jump over I/O waits), so timings here are
short and every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio._request import ChatRequest
from rakka_trio.testing import Fault, MockProvider, RouteSelector, serve_mock_provider

pytestmark = pytest.mark.trio

KEY = "sk-mock-4f9a8b7c6d5e4f3a2b1c"
REPLY = "Hello from the mock provider."
HI = ChatRequest(messages=[{"role": "user", "content": "hi"}])
PROVIDERS = ["openai", "anthropic", "gemini", "openai-responses"]


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(api_key=KEY, reply=REPLY, chunks=6)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def endpoint(
    mock: MockProvider,
    provider: str = "openai",
    *,
    name: str | None = None,
    credential: rk.Credential | None = None,
    retries: int = 2,
    breaker: rk.BreakerConfig | None = None,
    timeouts: rk.Timeouts | None = None,
    **retry: object,
) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name or provider,
        provider=provider,
        base_url=mock.base_url_for(provider),  # type: ignore[arg-type]
        model="mock-model",
        credential=credential or rk.StaticCredential(KEY),
        retry=rk.RetryPolicy(
            max_retries=retries,
            initial_backoff=0.01,
            max_backoff=0.05,
            **retry,  # type: ignore[arg-type]
        ),
        breaker=breaker or rk.BreakerConfig(),
        timeouts=timeouts or rk.Timeouts(),
    )


def supervisor(*endpoints: rk.EndpointConfig) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(endpoints=list(endpoints))


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_and_complete_every_provider(mock: MockProvider, provider: str) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, provider))) as sup:
            ep = sup.endpoint(provider)
            async with ep.stream(HI) as chunks:
                pieces = [c.text async for c in chunks]
            assert "".join(pieces) == REPLY
            assert len([p for p in pieces if p]) > 1  # really streamed, in pieces
            assert chunks.finish_reason == "stop"
            assert chunks.usage is not None and chunks.usage.output_tokens > 0
            done = await ep.complete(HI)
            assert (done.text, done.finish_reason, done.attempts) == (REPLY, "stop", 1)
            assert done.usage is not None and done.usage.input_tokens > 0
            stats = ep.breaker.statistics()
            assert (stats.successes, stats.failures, stats.ignored) == (2, 0, 0)


async def test_openai_requests_usage_in_stream(mock: MockProvider) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            await sup.endpoint("openai").complete(HI)
    body = mock.requests[-1].json
    assert isinstance(body, dict)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_503_storm_trips_breaker_and_probe_closes_it(mock: MockProvider) -> None:
    breaker = rk.BreakerConfig(failure_threshold=3, open_duration=0.3)
    mock.add_fault("openai", Fault.status(503), times=3)
    with trio.fail_after(10):
        async with rk.open_supervisor(
            supervisor(endpoint(mock, retries=0, breaker=breaker))
        ) as sup:
            ep = sup.endpoint("openai")
            for _ in range(3):
                with pytest.raises(rk.ServerError) as info:
                    await ep.complete(HI)
                assert info.value.status == 503
            assert ep.breaker.state is rk.BreakerState.OPEN
            sent = len(mock.requests)
            with pytest.raises(rk.CircuitOpen):
                await ep.complete(HI)
            assert len(mock.requests) == sent  # failed fast: nothing reached the provider
            await trio.sleep(0.3)
            assert (await ep.complete(HI)).text == REPLY  # the probe
            assert ep.breaker.state is rk.BreakerState.CLOSED


async def test_retries_ride_out_a_short_storm(mock: MockProvider) -> None:
    mock.add_fault("anthropic", Fault.status(529, error_type="overloaded_error"), times=2)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "anthropic"))) as sup:
            done = await sup.endpoint("anthropic").complete(HI)
            assert (done.text, done.attempts) == (REPLY, 3)
            assert sup.breaker("anthropic").statistics().failures == 2


async def test_429_honours_retry_after_and_never_counts(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.rate_limited(retry_after=0.2), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            start = trio.current_time()
            done = await sup.endpoint("openai").complete(HI)
            assert done.attempts == 2
            assert trio.current_time() - start >= 0.2
            stats = sup.breaker("openai").statistics()
            assert (stats.failures, stats.ignored, stats.successes) == (0, 1, 1)


async def test_429_beyond_max_server_wait_fails_fast(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.rate_limited(retry_after=120), times=1)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, max_server_wait=5.0))) as sup:
            with pytest.raises(rk.RateLimited) as info:
                await sup.endpoint("openai").complete(HI)
    assert info.value.retry_after == 120
    assert len(mock.requests) == 1


async def test_insufficient_quota_is_never_retried(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.insufficient_quota())
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            with pytest.raises(rk.QuotaExhausted):
                await sup.endpoint("openai").complete(HI)
            assert sup.breaker("openai").statistics().failures == 0
    assert len(mock.requests) == 1


async def test_slow_first_byte_times_out(mock: MockProvider) -> None:
    mock.add_fault("gemini", Fault.slow_first_byte(5.0))
    cfg = endpoint(mock, "gemini", retries=0, timeouts=rk.Timeouts(first_byte=0.2))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            with pytest.raises(rk.Timeout) as info:
                await sup.endpoint("gemini").complete(HI)
            assert info.value.phase == "first_byte"
            assert sup.breaker("gemini").statistics().failures == 1


async def test_stall_after_output_ends_stream_without_duplicates(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.stall(after_chunks=2, duration=5.0), times=1)
    cfg = endpoint(mock, timeouts=rk.Timeouts(read_gap=0.2))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            received: list[str] = []
            with pytest.raises(rk.Timeout) as info:
                async with sup.endpoint("openai").stream(HI) as chunks:
                    async for chunk in chunks:
                        received.append(chunk.text)
            assert info.value.phase == "read_gap"
            text = "".join(received)
            assert text and REPLY.startswith(text) and text != REPLY
            assert len(mock.requests) == 1  # output was delivered: never retried
            assert sup.breaker("openai").statistics().failures == 1


async def test_truncated_stream(mock: MockProvider) -> None:
    mock.add_fault("anthropic", Fault.truncate(after_chunks=3), times=2)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, "anthropic"))) as sup:
            ep = sup.endpoint("anthropic")
            with pytest.raises(rk.StreamTruncated):
                async with ep.stream(HI) as chunks:
                    async for _ in chunks:
                        pass
            # complete() had delivered nothing yet, so it retries the truncated stream.
            done = await ep.complete(HI)
            assert (done.text, done.attempts) == (REPLY, 2)


@pytest.mark.parametrize(
    ("provider", "error_type", "expected"),
    [
        ("anthropic", "overloaded_error", rk.Overloaded),
        ("openai", "server_error", rk.ServerError),
    ],
)
async def test_mid_stream_error_events_are_typed(
    mock: MockProvider,
    provider: RouteSelector,
    error_type: str,
    expected: type[rk.RakkaError],
) -> None:
    mock.add_fault(provider, Fault.mid_stream_error(after_chunks=2, error_type=error_type))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, provider, retries=0))) as sup:
            with pytest.raises(expected):
                await sup.endpoint(provider).complete(HI)


async def test_connection_reset_is_retried(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.connection_reset(), times=1)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            done = await sup.endpoint("openai").complete(HI)
            assert done.attempts == 2
            assert sup.breaker("openai").statistics().failures == 1


async def test_content_filter(mock: MockProvider) -> None:
    mock.add_fault("gemini", Fault.content_filter(after_chunks=1))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, "gemini"))) as sup:
            with pytest.raises(rk.ContentFiltered):
                await sup.endpoint("gemini").complete(HI)
            assert sup.breaker("gemini").statistics().failures == 0
    assert len(mock.requests) == 1


async def test_401_rotates_credential_once_and_succeeds(mock: MockProvider, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    cfg = endpoint(mock, "anthropic", credential=rk.FileCredential(key_file))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            ep = sup.endpoint("anthropic")
            await ep.complete(HI)
            assert ep.session.generation == 1
            new_key = "sk-mock-rotated-0a1b2c3d4e5f"
            mock.rotate_key(new_key)
            key_file.write_text(new_key)
            done = await ep.complete(HI)
            assert done.text == REPLY
            assert ep.session.generation == 2
            stats = ep.session.statistics()
            assert stats.rotations == 1 and stats.draining == 0
            # A key that really is wrong: one rebuild, one retry, then Unauthorized.
            mock.rotate_key("sk-mock-someone-else-999")
            with pytest.raises(rk.Unauthorized):
                await ep.complete(HI)
            assert ep.session.generation == 3


async def test_rotation_is_hot(mock: MockProvider) -> None:
    """In-flight streams finish on the old client; new calls use the new one."""
    mock.add_fault("openai", Fault.stall(after_chunks=1, duration=0.3), times=1)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            ep = sup.endpoint("openai")
            async with ep.stream(HI) as chunks:
                first = await chunks.__anext__()
                await ep.rotate_credentials()
                assert ep.session.statistics().draining == 1
                assert (await ep.complete(HI)).text == REPLY  # on the new client
                rest = [c.text async for c in chunks]  # the old one still serves this stream
            assert first.text + "".join(rest) == REPLY
            assert ep.session.statistics().draining == 0  # closed once drained


async def test_cancellation_is_never_a_failure(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.stall(after_chunks=1, duration=10.0))
    breaker = rk.BreakerConfig(failure_threshold=1, open_duration=0.1)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, breaker=breaker))) as sup:
            ep = sup.endpoint("openai")
            with trio.move_on_after(0.2) as scope:
                await ep.complete(HI)
            assert scope.cancelled_caught
            stats = ep.breaker.statistics()
            assert (stats.failures, stats.ignored) == (0, 1)
            # A cancelled half-open probe returns its permit.
            ep.breaker.force_open(0.05)
            await trio.sleep(0.06)
            with trio.move_on_after(0.2):
                await ep.complete(HI)
            assert ep.breaker.state is rk.BreakerState.HALF_OPEN
            assert ep.breaker.statistics().probes_in_flight == 0


async def test_leaving_a_stream_early_is_neutral(mock: MockProvider) -> None:
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            ep = sup.endpoint("openai")
            async with ep.stream(HI) as chunks:
                async for _ in chunks:
                    break
            stats = ep.breaker.statistics()
            assert (stats.successes, stats.failures, stats.ignored) == (0, 0, 1)
            assert ep.session.statistics().in_flight == 0


async def test_every_request_ends_with_exactly_one_outcome(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.status(503), probability=0.3)
    mock.add_fault("openai", Fault.truncate(after_chunks=2), probability=0.2)
    mock.add_fault("openai", Fault.rate_limited(retry_after=0.01), probability=0.2)
    cfg = endpoint(mock, retries=0, breaker=rk.BreakerConfig(failure_threshold=1000))
    outcomes: list[str] = []
    with trio.fail_after(20):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            ep = sup.endpoint("openai")

            async def one() -> None:
                try:
                    await ep.complete(HI)
                    outcomes.append("ok")
                except rk.RakkaError as exc:
                    outcomes.append(type(exc).__name__)

            async with trio.open_nursery() as nursery:
                for _ in range(60):
                    nursery.start_soon(one)
            stats = ep.breaker.statistics()
    assert len(outcomes) == 60
    assert stats.successes == outcomes.count("ok")
    assert stats.successes + stats.failures + stats.ignored == 60
    assert {"ok", "ServerError", "StreamTruncated", "RateLimited"} <= set(outcomes)


async def test_secrets_never_reach_logs_or_errors(
    mock: MockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mock.add_fault("openai", Fault.status(503), times=1)
    mock.add_fault("openai", Fault.unauthorized(), times=2)
    errors: list[str] = []
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, retries=1))) as sup:
            ep = sup.endpoint("openai")
            for _ in range(2):
                try:
                    await ep.complete(HI)
                except rk.RakkaError as exc:
                    errors.append(f"{exc!s} {exc!r}")
            errors.append(repr(ep.config))
            errors.append(repr(sup.statistics()))
    assert errors
    assert any("retrying" in r.getMessage() for r in caplog.records)  # logs were captured
    text = "\n".join(errors + [r.getMessage() for r in caplog.records])
    assert KEY not in text
    assert KEY[8:] not in text


async def test_missing_model_is_a_clear_error(mock: MockProvider) -> None:
    cfg = rk.EndpointConfig(name="x", provider="openai", base_url=mock.base_url_for("openai"))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            with pytest.raises(rk.ConfigError, match="no model"):
                await sup.endpoint("x").complete(HI)


async def test_network_refused(mock: MockProvider) -> None:
    cfg = rk.EndpointConfig(
        name="down",
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        retry=rk.RetryPolicy(max_retries=0),
    )
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            with pytest.raises(rk.NetworkError):
                await sup.endpoint("down").complete(HI)
            assert sup.breaker("down").statistics().failures == 1


def limited(mock: MockProvider, limits: rk.RateLimits, **kw: object) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name="openai",
        provider="openai",
        base_url=mock.base_url_for("openai"),
        model="mock-model",
        credential=rk.StaticCredential(KEY),
        limits=limits,
        retry=rk.RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
        **kw,  # type: ignore[arg-type]
    )


async def test_limiter_reserves_then_settles_actual_usage(mock: MockProvider) -> None:
    limits = rk.RateLimits(requests_per_minute=600, tokens_per_minute=100_000, max_concurrent=2)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(limited(mock, limits))) as sup:
            request = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
            done = await sup.endpoint("openai").complete(request)
            assert done.usage is not None
            (key,) = sup.limiter("openai").statistics().keys
            tokens = next(lim for lim in key.limits if lim.name == "tokens_per_minute")
            # The 5000-token estimate was corrected to the few tokens really used (the bucket
            # also refills continuously meanwhile, so the spend is at most the usage).
            spent = tokens.burst - tokens.available
            assert -1e-6 <= spent <= done.usage.total_tokens + 1
            assert done.usage.total_tokens < 100
            assert key.admitted == 1 and key.in_flight == 0
            # The key is this credential's fingerprint, never the key itself.
            assert rk.Secret(KEY).fingerprint in key.key
            assert KEY not in key.key


async def test_limiter_bounds_concurrency(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.stall(after_chunks=1, duration=0.2))
    limits = rk.RateLimits(max_concurrent=2)
    peak = 0
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(limited(mock, limits))) as sup:

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, sup.limiter("openai").statistics().in_flight)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as calls:
                    for _ in range(6):
                        calls.start_soon(sup.endpoint("openai").complete, HI)
                nursery.cancel_scope.cancel()
            assert sup.limiter("openai").statistics().in_flight == 0
    assert peak == 2


async def test_429_pauses_the_key(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.rate_limited(retry_after=0.3), times=1)
    limits = rk.RateLimits(requests_per_minute=6000)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(limited(mock, limits))) as sup:
            start = trio.current_time()
            done = await sup.endpoint("openai").complete(HI)
            assert done.attempts == 2
            assert trio.current_time() - start >= 0.3
            (key,) = sup.limiter("openai").statistics().keys
            assert key.pauses == 1


async def test_total_timeout_bounds_the_whole_call(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.stall(after_chunks=2, duration=5.0))
    cfg = endpoint(mock, retries=0, timeouts=rk.Timeouts(total=0.3, read_gap=10.0))
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            ep = sup.endpoint("openai")
            with pytest.raises(rk.DeadlineExceeded) as info:  # a local limit
                await ep.complete(HI)
            assert info.value.phase == "total"
            received: list[str] = []
            with pytest.raises(rk.DeadlineExceeded) as info:
                async with ep.stream(HI) as chunks:
                    async for chunk in chunks:
                        received.append(chunk.text)
            assert info.value.phase == "total"
            assert received  # the first chunks arrived before the stall
            assert (
                ep.breaker.statistics().failures == 0
            )  # our own deadline: not the provider's fault


# --- attempts, retries and the breaker's cause ----------------------------------------------


async def test_every_attempt_and_retry_is_counted(mock: MockProvider) -> None:
    mock.add_fault("openai", Fault.status(503), times=2)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, retries=3))) as sup:
            done = await sup.endpoint("openai").complete(HI)
            m = sup.statistics().endpoints["openai"].metrics
    assert done.attempts == 3
    assert m is not None
    assert {k: v for k, v in m.attempts.items() if v} == {"5xx": 2, "ok": 1}
    assert {k: v for k, v in m.requests.items() if v} == {"ok": 1}
    assert m.retries == 2
    # Each attempt recorded its own outcome on the breaker (see README "Concepts").
    assert sup.breaker("openai").statistics().failures == 2


async def test_circuit_open_after_a_failed_attempt_carries_the_provider_error(
    mock: MockProvider,
) -> None:
    mock.add_fault("openai", Fault.status(503))
    breaker = rk.BreakerConfig(failure_threshold=1, open_duration=30.0)
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock, breaker=breaker))) as sup:
            with pytest.raises(rk.CircuitOpen) as info:
                await sup.endpoint("openai").complete(HI)
            m = sup.statistics().endpoints["openai"].metrics
    # The 503 that tripped the breaker is the cause, and no retry was attempted past it.
    assert isinstance(info.value.__cause__, rk.ServerError)
    assert info.value.__cause__.status == 503
    assert len(mock.requests) == 1
    # Times in the message are seconds from now, never Trio's clock.
    message = str(info.value)
    assert "t=" not in message
    wait = float(message.split("retry in ")[1].rstrip("s"))
    assert 29.0 <= wait <= 30.0
    assert m is not None
    assert (m.attempts["5xx"], m.requests["circuit_open"], m.requests["5xx"]) == (1, 1, 0)


# --- the limiter before the breaker's probe permit (MockClock, nothing is sent) ---------------


async def test_a_call_waiting_for_the_limiter_holds_no_half_open_probe(
    mock_clock: trio.testing.MockClock,
) -> None:
    cfg = rk.EndpointConfig(
        name="x",
        provider="openai",
        base_url="http://127.0.0.1:9/v1",  # never reached: the calls wait for the limiter
        model="m",
        limits=rk.RateLimits(requests_per_minute=6, requests_burst=1),
    )
    outcomes: list[str] = []

    async def call(ep: rk.Endpoint) -> None:
        with trio.move_on_after(5.0):  # the budget comes back only after 10 s
            try:
                await ep.complete(HI)
            except rk.RakkaError as exc:
                outcomes.append(type(exc).__name__)
                return
        outcomes.append("still waiting")

    with trio.fail_after(60):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            assert sup.limiter("x").try_acquire() == 0.0  # the only unit of the burst
            sup.force_open("x", 1.0)
            await trio.sleep(1.5)
            assert sup.breaker("x").state is rk.BreakerState.HALF_OPEN
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call, sup.endpoint("x"))
            probes = sup.breaker("x").statistics().probes_in_flight
    # No call took the only probe while waiting, so none failed "probe limit reached".
    assert outcomes == ["still waiting"] * 3
    assert probes == 0


# --- cleanup is shielded but bounded (MockClock) -----------------------------------------------


def _sse(delta: str) -> bytes:
    return (
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":' + delta.encode() + b',"finish_reason":null}]}\n\n'
    )


class _StuckClose(httpx.AsyncByteStream):
    """A response body that goes quiet after ``body`` (when ``quiet``) and whose close hangs:
    a peer that never finishes the connection."""

    def __init__(self, body: bytes, *, quiet: bool) -> None:
        self._body = body
        self._quiet = quiet

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body
        if self._quiet:
            await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.sleep(1000)


class _StuckTransport(httpx.AsyncBaseTransport):
    def __init__(self, case: str) -> None:
        self._case = case

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._case == "error_body":
            return httpx.Response(503, stream=_StuckClose(b'{"error": {}}', quiet=False))
        delta = '{"content":"hi"}' if self._case == "early_exit" else '{"role":"assistant"}'
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_StuckClose(_sse(delta), quiet=True),
        )


@pytest.mark.parametrize("case", ["early_exit", "cancelled", "error_body"])
async def test_closing_a_stuck_response_is_bounded(
    mock_clock: trio.testing.MockClock, case: str
) -> None:
    from rakka_trio._breaker import BreakerHandle
    from rakka_trio._call import Endpoint
    from rakka_trio._call._stream import CLEANUP_TIMEOUT

    cfg = rk.EndpointConfig(
        name="x",
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        retry=rk.RetryPolicy(max_retries=0),
        timeouts=rk.Timeouts(total=1.0 if case == "cancelled" else None, read_gap=1.0),
    )
    ep = Endpoint(cfg, BreakerHandle("x"), transport=_StuckTransport(case))
    with trio.fail_after(2000):
        start = trio.current_time()
        if case == "early_exit":  # the caller leaves after the first chunk
            async with ep.stream(HI) as chunks:
                async for chunk in chunks:
                    assert chunk.text == "hi"
                    break
            bound = CLEANUP_TIMEOUT
        elif case == "cancelled":  # the total timeout cancels the call before any output
            with pytest.raises(rk.DeadlineExceeded):
                await ep.complete(HI)
            bound = 1.0 + CLEANUP_TIMEOUT
        else:  # reading the error body ends with a close that never returns
            with pytest.raises(rk.ServerError):
                await ep.complete(HI)
            bound = 1.0
        elapsed = trio.current_time() - start
        await ep.session.aclose()
    # Cleanup survives cancellation (shielded), yet never waits past its bound.
    assert elapsed <= bound + 0.5


# --- ChunkStream is a trio ReceiveChannel ------------------------------------------------


async def test_chunk_stream_is_a_receive_channel(mock: MockProvider) -> None:
    with trio.fail_after(5):
        async with rk.open_supervisor(supervisor(endpoint(mock))) as sup:
            async with sup.endpoint("openai").stream(HI) as chunks:
                assert isinstance(chunks, trio.abc.ReceiveChannel)
                first = await chunks.receive()
                rest = [chunk async for chunk in chunks]
                assert first.text + "".join(c.text for c in rest) == REPLY
                with pytest.raises(trio.EndOfChannel):
                    await chunks.receive()
                await chunks.aclose()
                await chunks.aclose()  # idempotent
                with pytest.raises(trio.ClosedResourceError):
                    await chunks.receive()
            assert sup.breaker("openai").statistics().successes == 1
