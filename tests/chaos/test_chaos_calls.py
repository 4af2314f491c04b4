"""Chaos: random fault plans from the mock provider against many concurrent streaming requests.

For every seed: each request ends with exactly one outcome, nothing hangs, no task outlives
the run, no output is duplicated, the concurrency limit holds at the provider, and a breaker
trips within its threshold during a storm and recovers after it. Real sockets, real clock,
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, RouteSelector, serve_mock_provider

pytestmark = pytest.mark.trio

KEY = "sk-mock-chaos-5d4c3b2a1908"
REPLY = "one two three four five six seven eight nine ten eleven twelve"
MAX_CONCURRENT = 4


def all_tasks() -> int:
    """Tasks alive under the current (test) task: a leak shows up as a difference. (The mock
    provider's connection handlers live in the fixture's nursery, outside this count.)"""
    count = 0
    stack = [trio.lowlevel.current_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def random_plan(mock: MockProvider, route: RouteSelector, rng: random.Random) -> None:
    faults = [
        Fault.status(rng.choice([500, 502, 503, 529])),
        Fault.rate_limited(retry_after=0.02),
        Fault.truncate(after_chunks=rng.randint(0, 6)),
        Fault.mid_stream_error(after_chunks=rng.randint(1, 6), error_type="server_error"),
        Fault.connection_reset(after_bytes=rng.choice([0, 200])),
        Fault.stall(after_chunks=rng.randint(1, 4), duration=0.5),
        Fault.slow_first_byte(0.5),
    ]
    for fault in rng.sample(faults, k=rng.randint(3, len(faults))):
        mock.add_fault(route, fault, probability=rng.uniform(0.03, 0.12))


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(api_key=KEY, reply=REPLY, chunks=6, seed=7)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def chaos_endpoint(mock: MockProvider, provider: str) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=provider,
        provider=provider,
        base_url=mock.base_url_for(provider),  # type: ignore[arg-type]
        model="chaos",
        credential=rk.StaticCredential(KEY),
        retry=rk.RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.05),
        breaker=rk.BreakerConfig(failure_threshold=50, failure_rate_threshold=None),
        timeouts=rk.Timeouts(first_byte=0.2, read_gap=0.2),
        limits=rk.RateLimits(max_concurrent=MAX_CONCURRENT),
    )


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Every request handed to the network (counted on the client, below the endpoint)."""
    requests: list[httpx.Request] = []
    real = httpx.AsyncHTTPTransport.handle_async_request

    async def counting(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return await real(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", counting)
    return requests


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_faults_many_requests(
    mock: MockProvider, sent: list[httpx.Request], seed: int
) -> None:
    rng = random.Random(seed)
    routes: list[RouteSelector] = ["openai", "anthropic", "gemini"]
    for route in routes:
        random_plan(mock, route, rng)
    cfg = rk.SupervisorConfig(endpoints=[chaos_endpoint(mock, p) for p in routes])
    outcomes: Counter[str] = Counter()
    texts: list[tuple[str, str]] = []
    peak_pending: dict[str, int] = dict.fromkeys(routes, 0)
    tasks_before = all_tasks()
    with trio.fail_after(60):
        async with rk.open_supervisor(cfg) as sup:

            async def one(i: int) -> None:
                name = routes[i % len(routes)]
                received: list[str] = []
                request = rk.ChatRequest(messages=[{"role": "user", "content": f"q{i}"}])
                try:
                    async with sup.endpoint(name).stream(request) as chunks:
                        async for chunk in chunks:
                            received.append(chunk.text)
                    outcome = "ok"
                except rk.RakkaError as exc:
                    outcome = type(exc).__name__
                outcomes[outcome] += 1
                texts.append((outcome, "".join(received)))

            async def watch_concurrency() -> None:
                while True:
                    pending: Counter[str | None] = Counter(
                        r.route for r in mock.requests if r.outcome == "pending"
                    )
                    for route in routes:
                        peak_pending[route] = max(peak_pending[route], pending[route])
                    await trio.sleep(0.002)

            async with trio.open_nursery() as watchers:
                watchers.start_soon(watch_concurrency)
                async with trio.open_nursery() as load:
                    for i in range(150):
                        load.start_soon(one, i)
                watchers.cancel_scope.cancel()
            breaker_totals = [sup.breaker(r).statistics() for r in routes]
            limiter_in_flight = [sup.limiter(r).statistics().in_flight for r in routes]
    assert all_tasks() == tasks_before  # nothing outlived the supervisor
    assert sum(outcomes.values()) == 150  # exactly one outcome each
    assert outcomes["ok"] > 50
    for outcome, text in texts:
        if outcome == "ok":
            assert text == REPLY
        else:
            assert REPLY.startswith(text)  # a prefix at most: never repeated output
    # The breakers saw every attempt exactly once (success, counted failure or neutral). The
    # attempts are counted where they leave the client: one whose first_byte timeout ran out
    # before the server had read it never shows up in the server's records.
    calls = sum(s.successes + s.failures + s.ignored for s in breaker_totals)
    assert calls == len(sent)
    assert len([r for r in mock.requests if r.route in routes]) <= len(sent)
    assert limiter_in_flight == [0, 0, 0]
    assert 2 <= max(peak_pending.values()) <= MAX_CONCURRENT  # real overlap, never over


async def test_storm_trips_within_threshold_then_recovers(mock: MockProvider) -> None:
    threshold = 5
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="primary",
                provider="openai",
                base_url=mock.base_url_for("openai"),
                model="chaos",
                credential=rk.StaticCredential(KEY),
                retry=rk.RetryPolicy(max_retries=0),
                breaker=rk.BreakerConfig(
                    failure_threshold=threshold, open_duration=0.2, success_threshold=2
                ),
                limits=rk.RateLimits(max_concurrent=8),
            )
        ]
    )
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            now = trio.current_time()
            mock.add_fault("openai", Fault.status(503), start=now, end=now + 1.0)
            results: Counter[str] = Counter()

            async def client(deadline: float) -> None:
                while trio.current_time() < deadline:
                    try:
                        await sup.endpoint("primary").complete(
                            rk.ChatRequest(messages=[{"role": "user", "content": "x"}])
                        )
                        results["ok"] += 1
                    except rk.RakkaError as exc:
                        results[type(exc).__name__] += 1
                        await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(client, now + 2.0)
            transitions = []
            while True:
                try:
                    event = events.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(event, rk.Transition):
                    transitions.append(event)
    first = transitions[0]
    assert (first.to_state, first.cause, first.consecutive_failures) == (
        rk.BreakerState.OPEN,
        "failure_threshold",
        threshold,
    )
    # Before the trip at most threshold + (concurrency - 1) requests can have been in flight.
    storm_requests_before_trip = [
        r for r in mock.requests if r.status == 503 and r.received_at <= first.at
    ]
    assert len(storm_requests_before_trip) <= threshold + 7
    assert results["CircuitOpen"] > 0  # it failed fast during the storm
    assert transitions[-1].to_state is rk.BreakerState.CLOSED  # and recovered after it
    assert transitions[-1].cause == "probe_succeeded"
    assert results["ok"] > 0
