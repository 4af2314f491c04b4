"""Deployments route like a gateway, on real loopback sockets: endpoints that cannot serve now
are skipped without waiting, a 429 / overload / early timeout moves the request on at once,
each strategy splits traffic as documented, and every attempt is counted with its outcome.

Two (or three) loopback mock providers play the endpoints so faults hit one of them only.
Real sockets need the real clock: every test is bounded by ``trio.fail_after``. Traffic
shares are asserted within stated tolerances; random choices use seeded generators.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

REPLY = "one two three four five six seven eight"
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])
RETRY_AFTER = 3.0
LOOPS = 8


@pytest.fixture
async def mocks() -> AsyncIterator[tuple[MockProvider, MockProvider]]:
    primary = MockProvider(reply=REPLY, chunks=8, seed=1)
    backup = MockProvider(reply=REPLY, chunks=8, seed=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, primary)
        await nursery.start(serve_mock_provider, backup)
        yield primary, backup
        nursery.cancel_scope.cancel()


def endpoint(mock: MockProvider, name: str, **kw: Any) -> rk.EndpointConfig:
    kw.setdefault("retry", rk.RetryPolicy(max_retries=0))
    return rk.EndpointConfig(
        name=name, provider="openai", base_url=mock.base_url_for("openai"), model="m", **kw
    )


def deployment(*endpoints: rk.EndpointConfig, **kw: Any) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=list(endpoints),
        deployments=[rk.DeploymentConfig(name="chat", endpoints=[e.name for e in endpoints], **kw)],
    )


async def served_by(dep: rk.Deployment, n: int) -> Counter[str]:
    """Send ``n`` requests one after another; count who served them."""
    served: Counter[str] = Counter()
    for _ in range(n):
        done = await dep.complete(HI)
        assert done.text == REPLY
        assert done.endpoint is not None
        served[done.endpoint] += 1
    return served


async def loops(dep: rk.Deployment, per_loop: int) -> tuple[list[float], Counter[str], list[str]]:
    """``LOOPS`` concurrent callers, ``per_loop`` requests each: (latencies, served, failures)."""
    latencies: list[float] = []
    served: Counter[str] = Counter()
    failures: list[str] = []

    async def caller() -> None:
        for _ in range(per_loop):
            start = trio.current_time()
            try:
                done = await dep.complete(HI)
            except rk.RakkaError as exc:
                failures.append(repr(exc))
                continue
            latencies.append(trio.current_time() - start)
            assert done.endpoint is not None
            served[done.endpoint] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(LOOPS):
            nursery.start_soon(caller)
    return latencies, served, failures


def metrics(sup: rk.Supervisor, name: str) -> rk.EndpointMetrics:
    m = sup.statistics().endpoints[name].metrics
    assert m is not None
    return m


# --- acceptance: a primary answering 429 + Retry-After ---------------------------------------


async def test_429_primary_with_healthy_backup_serves_every_caller_at_once(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.rate_limited(retry_after=RETRY_AFTER))  # every request
    # Default retry policy: up to 3 retries, honouring the server's Retry-After.
    cfg = deployment(
        endpoint(primary, "primary", retry=rk.RetryPolicy()),
        endpoint(backup, "backup", retry=rk.RetryPolicy()),
    )
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup:
            latencies, served, failures = await loops(sup.deployment("chat"), per_loop=10)
            m = metrics(sup, "primary")
            paused = sup.limiter("primary").statistics().keys[0].pauses
    assert failures == []
    assert served == {"backup": LOOPS * 10}
    # Nobody slept a Retry-After: a 429 moved the request to the backup at once, and later
    # requests skipped the paused primary without waiting.
    assert max(latencies) < RETRY_AFTER
    assert paused >= 1
    # Only requests already on their way when the first 429 came back reached the primary
    # (at most one per caller); none inside the Retry-After after that.
    first = min(r.received_at for r in primary.requests)
    assert len([r for r in primary.requests if r.received_at < first + RETRY_AFTER]) <= LOOPS
    # Every try on the primary is counted as a 429 attempt; none was retried there.
    assert m.attempts["429"] == len(primary.requests)
    assert m.retries == 0


async def test_shared_key_and_model_on_two_servers_do_not_share_a_pause() -> None:
    primary = MockProvider(reply=REPLY, chunks=8, seed=1)
    backup = MockProvider(reply=REPLY, chunks=8, seed=2)
    primary.add_fault("openai", Fault.rate_limited(retry_after=RETRY_AFTER))
    shared = {"credential": rk.StaticCredential("sk-shared-dummy-key"), "retry": rk.RetryPolicy()}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # Two servers (two hosts) reached with the same API key and model, like two vLLM
            # replicas behind one dummy key.
            await nursery.start(serve_mock_provider, primary, "127.0.0.1")
            await nursery.start(serve_mock_provider, backup, "127.0.0.2")
            cfg = deployment(
                endpoint(primary, "primary", **shared), endpoint(backup, "backup", **shared)
            )
            async with rk.open_supervisor(cfg) as sup:
                # Two servers, one API key and model: two limit keys, so two 429 pauses.
                assert sup.limiter("primary").key() != sup.limiter("backup").key()
                latencies, served, failures = await loops(sup.deployment("chat"), per_loop=10)
            nursery.cancel_scope.cancel()
    assert failures == []
    assert served == {"backup": LOOPS * 10}
    assert max(latencies) < RETRY_AFTER
    first = min(r.received_at for r in primary.requests)
    assert len([r for r in primary.requests if r.received_at < first + RETRY_AFTER]) <= LOOPS


# --- moving on at once, and retrying in place only when nobody else can serve -----------------


async def test_overload_moves_on_without_same_endpoint_retries(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(529))  # Overloaded
    slow_retries = rk.RetryPolicy(max_retries=3, initial_backoff=1.0, jitter="none")
    cfg = deployment(endpoint(primary, "primary", retry=slow_retries), endpoint(backup, "backup"))
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            done = await sup.deployment("chat").complete(HI)
            m = metrics(sup, "primary")
            routes = sup.deployment("chat").statistics().fallback_routes
    assert done.endpoint == "backup"
    assert len(primary.requests) == 1
    assert (m.attempts["5xx"], m.retries) == (1, 0)
    assert routes == {("primary", "backup", "Overloaded"): 1}


async def test_a_429_that_forbids_retries_there_still_moves_on(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(429, headers={"x-should-retry": "false"}))
    cfg = deployment(endpoint(primary, "primary"), endpoint(backup, "backup"))
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            done = await sup.deployment("chat").complete(HI)
    assert done.endpoint == "backup"


async def test_timeout_before_the_first_byte_moves_on_at_once(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.slow_first_byte(5.0))
    retries = rk.RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02)
    cfg = deployment(
        endpoint(primary, "primary", retry=retries, timeouts=rk.Timeouts(first_byte=0.2)),
        endpoint(backup, "backup"),
    )
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            done = await sup.deployment("chat").complete(HI)
            m = metrics(sup, "primary")
    assert done.endpoint == "backup"
    assert len(primary.requests) == 1
    assert (m.attempts["timeout"], m.retries) == (1, 0)


async def test_failover_on_first_error_skips_same_endpoint_retries(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(503))
    retries = rk.RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.02)
    patient = rk.BreakerConfig(failure_threshold=100)
    counts = {}
    for failover in (False, True):
        primary.clear_requests()
        cfg = deployment(
            endpoint(primary, "primary", retry=retries, breaker=patient),
            endpoint(backup, "backup"),
            failover_on_first_error=failover,
        )
        with trio.fail_after(10):
            async with rk.open_supervisor(cfg) as sup:
                assert (await sup.deployment("chat").complete(HI)).endpoint == "backup"
                counts[failover] = (len(primary.requests), metrics(sup, "primary").retries)
    assert counts[False] == (4, 3)  # a 5xx is retried in place first (the default)
    assert counts[True] == (1, 0)  # ... or moves on at once


async def test_same_endpoint_retry_only_when_no_other_can_serve(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.rate_limited(retry_after=0.2), times=1)
    cfg = deployment(
        endpoint(primary, "primary", retry=rk.RetryPolicy(max_retries=2)),
        endpoint(backup, "backup"),
    )
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            sup.force_open("backup", 60.0)
            done = await sup.deployment("chat").complete(HI)
            m = metrics(sup, "primary")
    assert done.endpoint == "primary"
    assert len(primary.requests) == 2 and backup.requests == []
    assert (m.attempts["429"], m.attempts["ok"], m.retries) == (1, 1, 1)


async def test_endpoint_short_of_rate_budget_is_skipped_without_waiting(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    one_a_minute = rk.RateLimits(requests_per_minute=1, requests_burst=1)
    cfg = deployment(endpoint(primary, "primary", limits=one_a_minute), endpoint(backup, "backup"))
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")
            assert (await dep.complete(HI)).endpoint == "primary"  # takes the minute's budget
            assert (await dep.complete(HI)).endpoint == "backup"  # no 60 s wait in line
            routes = dep.statistics().fallback_routes
    assert len(primary.requests) == 1
    assert routes == {("primary", "backup", "RateLimitExceeded"): 1}


async def test_waits_on_a_paused_endpoint_when_it_is_the_only_one(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    cfg = deployment(endpoint(primary, "primary"), endpoint(backup, "backup"))
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            sup.force_open("backup", 60.0)
            until = sup.limiter("primary").observe_rate_limited(0.3)
            done = await sup.deployment("chat").complete(HI)
    assert done.endpoint == "primary"
    assert [r.received_at >= until for r in primary.requests] == [True]


# --- strategies ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ordered", "weighted", "least_busy", "latency", "headroom"])
async def test_every_strategy_skips_endpoints_that_cannot_serve(
    mocks: tuple[MockProvider, MockProvider], strategy: str
) -> None:
    primary, backup = mocks
    cfg = deployment(
        endpoint(primary, "primary"),
        endpoint(backup, "backup"),
        strategy=strategy,
        weights={"primary": 100, "backup": 1},
        seed=3,
    )
    with trio.fail_after(20):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")
            sup.force_open("primary", 60.0)
            assert await served_by(dep, 10) == {"backup": 10}
            sup.reset("primary")
            sup.limiter("primary").observe_rate_limited(60.0)  # a 429 paused its key
            assert await served_by(dep, 10) == {"backup": 10}
    assert primary.requests == []


async def test_ordered_sends_everything_to_the_first_endpoint_that_can_serve(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    cfg = deployment(endpoint(primary, "primary"), endpoint(backup, "backup"))
    with trio.fail_after(20):
        async with rk.open_supervisor(cfg) as sup:
            assert await served_by(sup.deployment("chat"), 30) == {"primary": 30}


async def test_weighted_splits_by_weight(mocks: tuple[MockProvider, MockProvider]) -> None:
    primary, backup = mocks
    cfg = deployment(
        endpoint(primary, "primary"),
        endpoint(backup, "backup"),
        strategy="weighted",
        weights={"primary": 3, "backup": 1},
        seed=7,
    )
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup:
            served = await served_by(sup.deployment("chat"), 200)
    # 3:1 -> 75 % to the primary; tolerance +-7 points (about 2.3 standard deviations).
    assert abs(served["primary"] / 200 - 0.75) <= 0.07


async def test_least_busy_balances_requests_in_flight(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.chunk_delay = backup.chunk_delay = 0.2  # calls stay in flight for over a second
    cfg = deployment(
        endpoint(primary, "primary"), endpoint(backup, "backup"), strategy="least_busy"
    )
    with trio.fail_after(20):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")
            subs = [await dep.submit(HI) for _ in range(10)]
            where = Counter(sub.endpoint for sub in subs)
            busy = {
                name: ep.engine.busy_workers + ep.engine.queue_depth if ep.engine else -1
                for name, ep in sup.statistics().endpoints.items()
            }
            for sub in subs:
                await sub.aclose()
    assert where == {"primary": 5, "backup": 5}  # exact: each goes where fewer are in flight
    assert busy == {"primary": 5, "backup": 5}


async def test_least_busy_sends_most_traffic_to_the_faster_endpoint(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.chunk_delay = 0.05  # 8 chunks: about 400 ms a call; the backup answers at once
    cfg = deployment(
        endpoint(primary, "primary"), endpoint(backup, "backup"), strategy="least_busy"
    )
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup:
            _, served, failures = await loops(sup.deployment("chat"), per_loop=10)
    assert failures == []
    # The slow endpoint holds its calls longer, so new requests find it busier: the fast one
    # serves at least 65 % (in practice over 85 %, less on a very busy machine).
    assert served["backup"] >= 0.65 * LOOPS * 10


async def test_latency_prefers_the_fast_endpoint_and_tries_a_recovered_one_again(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    slow = primary.add_fault("openai", Fault.slow_first_byte(0.1))
    # Seeded: exploration (5 % of requests, to a random endpoint) hits the slower endpoint
    # once in the first 60 requests and early in the second phase.
    cfg = deployment(
        endpoint(primary, "primary"), endpoint(backup, "backup"), strategy="latency", seed=13
    )
    with trio.fail_after(60):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")
            first = await served_by(dep, 60)
            # The primary recovers and the backup slows down.
            primary.remove_fault(slow)
            backup.add_fault("openai", Fault.slow_first_byte(0.1))
            await served_by(dep, 40)
            last = await served_by(dep, 60)
    # The slower endpoint gets the first measurement and the explorations only; tolerance:
    # at most 15 % of the traffic.
    assert first["backup"] >= 0.85 * 60
    # The recovered primary was tried again, measured fast, and took the traffic back.
    assert last["primary"] >= 0.85 * 60


async def test_headroom_prefers_the_endpoint_with_most_rate_capacity_left(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    cfg = deployment(
        endpoint(
            primary, "primary", limits=rk.RateLimits(requests_per_minute=10, requests_burst=10)
        ),
        endpoint(backup, "backup", limits=rk.RateLimits(requests_per_minute=30, requests_burst=30)),
        strategy="headroom",
    )
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup:
            served = await served_by(sup.deployment("chat"), 40)
    # Each request goes where the least of the burst is used: 10 : 30, +-1 for the refill
    # during the test.
    assert abs(served["primary"] - 10) <= 1 and served.total() == 40


# --- accounting ---------------------------------------------------------------------------


async def test_a_503_storm_shows_as_5xx_attempts_while_the_backup_serves(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(503))
    retries = rk.RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02)
    cfg = deployment(
        endpoint(
            primary,
            "primary",
            retry=retries,
            breaker=rk.BreakerConfig(failure_threshold=2, open_duration=60.0),
        ),
        endpoint(backup, "backup"),
    )
    with trio.fail_after(20):
        async with rk.open_supervisor(cfg) as sup:
            served = await served_by(sup.deployment("chat"), 10)
            m = metrics(sup, "primary")
            stats = sup.deployment("chat").statistics()
    assert served == {"backup": 10}
    # The storm is visible although no request ended with a 5xx of its own: the request that
    # tripped the breaker (on its second 503) ended circuit_open without a third try, and
    # the others were refused by the open breaker.
    assert m.attempts["5xx"] == len(primary.requests) == 2
    assert m.requests["5xx"] == 0 and m.requests["circuit_open"] == 10
    assert stats.fallback_routes == {("primary", "backup", "CircuitOpen"): 10}
    assert stats.fallbacks == {"primary:CircuitOpen": 10}


async def test_a_stalled_primary_shows_timeouts(mocks: tuple[MockProvider, MockProvider]) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.stall(after_chunks=2, duration=5.0))
    cfg = deployment(
        endpoint(primary, "primary", timeouts=rk.Timeouts(read_gap=0.2)),
        endpoint(backup, "backup"),
    )
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            done = await sup.deployment("chat").complete(HI)
            m = metrics(sup, "primary")
            routes = sup.deployment("chat").statistics().fallback_routes
    assert done.endpoint == "backup" and done.text == REPLY
    assert (m.attempts["timeout"], m.requests["timeout"]) == (1, 1)
    assert routes == {("primary", "backup", "Timeout"): 1}


async def test_endpoint_submit_is_an_async_context_manager(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, _ = mocks
    with trio.fail_after(10):
        async with rk.open_supervisor(
            rk.SupervisorConfig(endpoints=[endpoint(primary, "p")])
        ) as sup:
            async with sup.endpoint("p").submit(HI) as sub:
                text = "".join([chunk.text async for chunk in sub])
            sub2 = await sup.endpoint("p").submit(HI)  # the awaited form still works
            async with sub2:
                done = await sub2.result()
    assert text == REPLY and done.text == REPLY
    assert sub.outcome is not None and sub.outcome.status == "ok"


# --- configuration --------------------------------------------------------------------------


async def test_deployment_routing_options_are_validated() -> None:
    with pytest.raises(rk.ConfigError, match="strategy"):
        rk.DeploymentConfig(name="d", endpoints=["a"], strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(rk.ConfigError, match=r"weights\.c"):
        rk.DeploymentConfig(name="d", endpoints=["a", "b"], weights={"c": 1})
    with pytest.raises(rk.ConfigError, match=r"weights\.a"):
        rk.DeploymentConfig(name="d", endpoints=["a", "b"], weights={"a": -1})
    with pytest.raises(rk.ConfigError, match="above 0"):
        rk.DeploymentConfig(name="d", endpoints=["a"], weights={"a": 0})
    cfg = rk.SupervisorConfig.from_dict(
        {
            "endpoints": [
                {"name": n, "provider": "openai", "base_url": "http://x/v1"} for n in ("a", "b")
            ],
            "deployments": [
                {
                    "name": "d",
                    "endpoints": ["a", "b"],
                    "strategy": "weighted",
                    "weights": {"a": 3},
                    "failover_on_first_error": True,
                }
            ],
        }
    )
    (dep,) = cfg.deployments
    assert (dep.strategy, dep.weight("a"), dep.weight("b"), dep.failover_on_first_error) == (
        "weighted",
        3.0,
        1.0,
        True,
    )


async def test_limiter_wait_estimate_says_how_long_without_taking_anything(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, _ = mocks
    limits = rk.RateLimits(requests_per_minute=60, requests_burst=1, max_concurrent=1)
    cfg = rk.SupervisorConfig(endpoints=[endpoint(primary, "p", limits=limits)])
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            limiter = sup.limiter("p")
            assert limiter.wait_estimate() == 0.0
            assert limiter.wait_estimate() == 0.0  # asking took nothing
            assert limiter.wait_estimate(rk.Cost(requests=2)) == float("inf")  # over the burst
            assert limiter.try_acquire() == 0.0
            assert 0.9 <= limiter.wait_estimate() <= 1.0  # 60/min: the next unit in a second
            async with await limiter.reserve(rk.Cost(requests=0)):
                assert limiter.wait_estimate(rk.Cost(requests=0)) == float("inf")  # no permit
            limiter.observe_rate_limited(5.0)
            assert 4.9 <= limiter.wait_estimate(rk.Cost(requests=0)) <= 5.0  # the 429 pause
