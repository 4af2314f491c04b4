"""Limiter semantics: non-blocking admission, the wait estimate, bounded waits, bursts, server
identity, adaptive switches, idle and retired keys. Virtual time (MockClock) throughout."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import rakka_trio as rk

pytestmark = pytest.mark.trio

KEY = rk.StaticCredential("sk-test-semantics-0123456789")


def endpoint(
    name: str = "ep",
    *,
    base_url: str = "http://127.0.0.1:9/v1",
    model: str | None = "m",
    credential: rk.Credential | None = KEY,
    **limits: Any,
) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url=base_url,
        model=model,
        credential=credential,
        limits=rk.RateLimits(**limits),
    )


@asynccontextmanager
async def supervisor(*endpoints: rk.EndpointConfig) -> AsyncIterator[rk.Supervisor]:
    with trio.fail_after(3600 * 24):  # virtual time: a hang fails instead of blocking forever
        async with rk.open_supervisor(rk.SupervisorConfig(endpoints=list(endpoints))) as sup:
            yield sup


@asynccontextmanager
async def limiter(**limits: Any) -> AsyncIterator[rk.LimiterHandle]:
    async with supervisor(endpoint(**limits)) as sup:
        yield sup.limiter("ep")


def key_stats(h: rk.LimiterHandle) -> rk.KeyStatistics:
    (key,) = h.statistics().keys
    return key


# --- non-blocking admission and the wait estimate ---------------------------------------------


async def test_try_acquire_never_reports_admitted_behind_a_permit_waiter(
    mock_clock: trio.testing.MockClock,
) -> None:
    # A reserve() waiting for a permit made try_acquire() return 0.0 ("admitted") while it
    # took nothing: the rate estimate ignored the permit the line was waiting for.
    async with limiter(requests_per_minute=600, max_concurrent=1) as h, trio.open_nursery() as n:
        held = await h.reserve()

        async def second() -> None:
            (await h.reserve()).release()

        n.start_soon(second)  # waits for the only permit
        await trio.testing.wait_all_tasks_blocked()
        before = key_stats(h).limits[0].available
        wait = h.try_acquire()
        assert wait > 0  # refused: it took nothing...
        assert key_stats(h).limits[0].available == before  # ...and indeed took nothing
        assert wait == math.inf  # behind a permit wait: no time is known
        with pytest.raises(trio.WouldBlock):
            h.acquire_nowait()
        assert h.wait_estimate() == math.inf
        held.release()  # the waiter gets the permit; the line is empty again
        await trio.testing.wait_all_tasks_blocked()
        assert h.try_acquire() == 0.0
        n.cancel_scope.cancel()


async def test_acquire_nowait_raises_would_block_with_the_wait(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=60, requests_burst=1) as h:
        h.acquire_nowait()  # admitted: returns, raises nothing
        with pytest.raises(trio.WouldBlock) as info:
            h.acquire_nowait()
        assert getattr(info.value, "wait", None) == pytest.approx(1.0)
        assert key_stats(h).limits[0].available == pytest.approx(0.0)  # nothing taken
        await trio.sleep(1.0)
        h.acquire_nowait()
        with pytest.raises(rk.RateLimitExceeded, match="can never be admitted"):
            h.acquire_nowait(rk.Cost(requests=2))


async def test_wait_estimate_changes_nothing_and_counts_pauses_and_permits(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=60, requests_burst=2, max_concurrent=1) as h:
        counters = key_stats(h)
        assert h.wait_estimate() == 0.0
        assert h.wait_estimate() == 0.0
        assert key_stats(h) == counters  # a query: nothing taken, nothing counted
        assert h.wait_estimate(rk.Cost(requests=3)) == math.inf  # larger than the burst
        r = await h.reserve(rk.Cost(requests=2))
        assert h.wait_estimate() == math.inf  # the only permit is held
        r.release()
        assert h.wait_estimate() == pytest.approx(1.0)  # the rate: one request per second
        assert h.wait_estimate(rk.Cost(requests=2)) == pytest.approx(2.0)
        h.observe_rate_limited(5.0)
        assert h.wait_estimate() == pytest.approx(5.0)  # the 429 pause
        await trio.sleep(5.0)
        assert h.wait_estimate() == 0.0


async def test_reserve_admits_on_entry_of_async_with(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(tokens_per_minute=1000, max_concurrent=1) as h:
        async with h.reserve(rk.Cost(input_tokens=100)) as r:
            assert isinstance(r, rk.Reservation)
            assert h.statistics().in_flight == 1
            r.mark_sent()
        assert r.released and h.statistics().in_flight == 0
        with pytest.raises(ValueError):
            async with h.reserve(rk.Cost(input_tokens=100)):
                raise ValueError("failed before sending")  # refunded
        assert key_stats(h).limits[0].available == pytest.approx(900.0)
        r2 = await h.reserve()  # the awaitable form still works
        r2.release()


# --- bounded waits, ten-second bursts -----------------------------------------------------------


async def test_overload_from_idle_admits_at_most_the_ten_second_burst_plus_the_rate(
    mock_clock: trio.testing.MockClock,
) -> None:
    """120/min, 8 callers a second for 30 s from idle: at most 140 get through (any 60 s
    window admits at most L + burst = 120 + 20), and callers that would wait past
    ``max_wait`` get a local RateLimited at once."""
    admitted: list[float] = []
    refused: list[tuple[float, rk.RateLimited]] = []
    waits: list[float] = []
    async with limiter(requests_per_minute=120, max_wait=30.0) as h:
        start = trio.current_time()

        async def caller() -> None:
            asked = trio.current_time()
            try:
                await h.acquire()
            except rk.RateLimited as exc:
                refused.append((trio.current_time() - asked, exc))
                return
            admitted.append(trio.current_time() - start)
            waits.append(trio.current_time() - asked)

        async with trio.open_nursery() as n:
            for _ in range(8 * 30):
                n.start_soon(caller)
                await trio.sleep(1 / 8)
            # Let the callers still in line finish (at most max_wait more).
    inside_30s = [t for t in admitted if t <= 30.0]
    assert len(inside_30s) <= 140
    assert len(inside_30s) <= 20 + 2 * 30 + 1  # the exact bound: burst + rate x time
    # Any 60 s window (the run and the line's drain span under 60 s): at most L + burst.
    assert len(admitted) <= 120 + 20
    assert len(admitted) >= 20 + 2 * 30  # the budget is used, not wasted
    assert max(waits) <= 30.0 + 1e-6  # nobody waited past max_wait
    assert refused, "callers past max_wait must be refused"
    for waited, exc in refused:
        assert waited == 0.0  # known up front: refused at once, not after sleeping
        assert isinstance(exc, rk.LocalRateLimited)
        assert exc.provider == "openai" and exc.endpoint == "ep"
        assert "local rate limiter" in str(exc)
        assert exc.retry_after is not None and exc.retry_after > 30.0
        assert exc.status is None and exc.retryable
    assert len(admitted) + len(refused) == 8 * 30


async def test_any_sixty_second_window_admits_at_most_limit_plus_burst(
    mock_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    async with limiter(requests_per_minute=60, max_wait=None) as h:
        start = trio.current_time()
        await trio.sleep(100)  # idle: the bucket is full
        while trio.current_time() - start < 400:
            wait = h.try_acquire()
            if wait:
                await trio.sleep(min(wait, 0.5))
            else:
                times.append(trio.current_time())
    burst = math.ceil(60 / 6)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + 60.0)
        assert in_window <= 60 + burst


async def test_max_wait_none_waits_as_long_as_it_takes(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=1, requests_burst=1, max_wait=None) as h:
        h.acquire_nowait()
        start = trio.current_time()
        await h.acquire()
        assert trio.current_time() - start == pytest.approx(60.0)
        with pytest.raises(rk.LocalRateLimited):
            await h.acquire(max_wait=1.0)  # a per-call bound still applies


# --- keys: server identity, adaptive switches -------------------------------------------------


async def test_servers_sharing_an_api_key_and_model_never_share_a_budget_or_a_pause(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with supervisor(
        endpoint("a", base_url="http://10.0.0.1:8000/v1", requests_per_minute=60),
        endpoint("b", base_url="http://10.0.0.2:8000/v1", requests_per_minute=60),
        endpoint("c", base_url="http://10.0.0.1:8000/other", requests_per_minute=60),
        endpoint("d", base_url="http://10.0.0.1:8001/v1", requests_per_minute=60),
    ) as sup:
        a, b, c, d = (sup.limiter(n) for n in "abcd")
        assert a.key() == c.key()  # same server: one budget
        assert len({a.key(), b.key(), d.key()}) == 3  # another host, another port
        assert "10.0.0.1:8000" in a.key() and "sk-test" not in a.key()
        a.observe_rate_limited(3.0)
        assert a.wait_estimate() == pytest.approx(3.0)
        assert c.wait_estimate() == pytest.approx(3.0)  # shares a's server
        assert b.wait_estimate() == 0.0 and d.wait_estimate() == 0.0  # not paused


async def test_adaptive_off_ignores_429s_and_max_pause_zero_never_pauses(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=600, adaptive=False) as h:
        now = trio.current_time()
        assert h.observe_rate_limited(5.0) == pytest.approx(now)
        assert not h.statistics().paused
        assert h.try_acquire() == 0.0
        assert key_stats(h).pauses == 0
    async with limiter(requests_per_minute=600, max_pause=0) as h:
        h.observe_rate_limited(5.0, headers={"x-ratelimit-remaining-requests": "50"})
        assert not h.statistics().paused and key_stats(h).pauses == 0
        assert key_stats(h).limits[0].available == pytest.approx(50.0)  # headers still adapt


# --- idle and retired keys ------------------------------------------------------------------------


async def test_idle_keys_are_dropped_only_when_nothing_is_in_flight(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=600, key_idle_timeout=60.0) as h:
        registry = h._registry
        h.acquire_nowait(model="family-a")
        held = await h.reserve(model="family-b")
        assert len(registry.all_keys()) == 3  # the endpoint's own, a and b
        await trio.sleep(100)
        # a (and the unused default) idled out; b holds an open reservation.
        assert [k.label.rsplit(":", 1)[1] for k in registry.all_keys()] == ["family-b"]
        held.release()
        await trio.sleep(100)
        assert registry.all_keys() == [] and registry.evicted == 3
        h.acquire_nowait(model="family-a")  # used again: a fresh key
        assert len(registry.all_keys()) == 1


async def test_a_drained_key_is_not_dropped_before_it_refilled(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Dropping a key in debt and re-creating it full would grant a free burst.
    async with limiter(tokens_per_minute=60, key_idle_timeout=10.0) as h:
        r = await h.reserve(rk.Cost(input_tokens=60))
        r.settle(rk.Cost(input_tokens=600))  # 540 tokens owed: 9 minutes to repay
        r.release()
        await trio.sleep(300)
        assert h.wait_estimate(rk.Cost(input_tokens=1)) > 0  # still owed: the key stayed
        await trio.sleep(400)
        assert h._registry.all_keys() == []  # repaid, full, idle: dropped


async def test_a_rotated_credential_retires_its_old_key(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=600, max_concurrent=2) as h:
        registry = h._registry
        old = h.key()
        r = await h.reserve()
        h.bind_credential(rk.Secret("sk-test-rotated-9876543210"))
        assert h.key() != old
        await trio.sleep(5)
        assert old in [k.label for k in registry.all_keys()]  # in use: kept
        r.release()
        await trio.sleep(5)
        assert old not in [k.label for k in registry.all_keys()]  # idle: dropped at once


async def test_a_server_scope_shares_one_budget_across_base_urls() -> None:
    # Two servers are two budgets by default; naming one scope puts them on one key.
    def config(scope: str | None) -> rk.SupervisorConfig:
        limits = rk.RateLimits(requests_per_minute=60, server_scope=scope)
        return rk.SupervisorConfig(
            endpoints=[
                rk.EndpointConfig(
                    name=name,
                    provider="openai",
                    base_url=url,
                    credential=rk.StaticCredential("sk-scope-test"),
                    model="gpt-4o-mini",
                    limits=limits,
                )
                for name, url in (("a", "http://127.0.0.1:8001"), ("b", "http://127.0.0.1:8002"))
            ]
        )

    for scope, shared in ((None, False), ("one-upstream", True)):
        async with rk.open_supervisor(config(scope)) as sup:
            a = {k.key for k in sup.limiter("a").statistics().keys}
            b = {k.key for k in sup.limiter("b").statistics().keys}
            assert (a == b) is shared
    with pytest.raises(rk.ConfigError, match="server_scope"):
        rk.RateLimits(server_scope="bad scope!")
