"""Local rate limiter: every timing rule under virtual time (MockClock)."""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import rakka_trio as rk

pytestmark = pytest.mark.trio

ONE = rk.Cost()


def endpoint(
    name: str = "ep",
    *,
    model: str | None = None,
    credential: rk.Credential | None = None,
    **limits: Any,
) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        model=model,
        credential=credential,
        limits=rk.RateLimits(**limits),
    )


@asynccontextmanager
async def supervisor(*endpoints: rk.EndpointConfig) -> AsyncIterator[rk.Supervisor]:
    async with rk.open_supervisor(rk.SupervisorConfig(endpoints=list(endpoints))) as sup:
        yield sup


@asynccontextmanager
async def limiter(**limits: Any) -> AsyncIterator[rk.LimiterHandle]:
    async with supervisor(endpoint(**limits)) as sup:
        yield sup.limiter("ep")


def available(h: rk.LimiterHandle, name: str = "requests_per_minute") -> float:
    (key,) = h.statistics().keys
    (limit,) = [lim for lim in key.limits if lim.name == name]
    return limit.available


async def test_refill_is_continuous_and_requests_hold_ten_seconds_worth(
    mock_clock: trio.testing.MockClock,
) -> None:
    # (Request limits used to hold one minute's worth; they now hold ten seconds' worth.)
    async with limiter(requests_per_minute=60, tokens_per_minute=600) as h:
        for _ in range(10):  # request burst = ceil(60 / 6)
            assert h.try_acquire() == 0.0
        assert h.try_acquire() == pytest.approx(1.0)  # then L/60 per second: no edge burst
        await trio.sleep(0.25)
        assert h.try_acquire() == pytest.approx(0.75)
        await trio.sleep(0.75)
        assert h.try_acquire() == 0.0
        assert h.try_acquire() == pytest.approx(1.0)
        await trio.sleep(500)  # (under key_idle_timeout, which would drop the idle key)
        assert available(h) == pytest.approx(10.0)  # idle time never stores more than a burst
        # Token limits keep one minute's worth, so one large request fits.
        assert available(h, "tokens_per_minute") == pytest.approx(600.0)
        assert h.try_acquire(rk.Cost(input_tokens=600)) == 0.0


async def test_burst_setting(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=600, requests_burst=5) as h:
        admitted = 0
        start = trio.current_time()
        while trio.current_time() - start < 1.05:
            wait = h.try_acquire()
            if wait:
                await trio.sleep(wait)
            else:
                admitted += 1
        # 5 at once, then one every 0.1 s.
        assert admitted == 5 + 10


async def test_admission_is_all_or_nothing(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=60, tokens_per_minute=100) as h:
        assert h.try_acquire(rk.Cost(input_tokens=80)) == 0.0
        wait = h.try_acquire(rk.Cost(input_tokens=80))
        assert wait == pytest.approx(60 * 60 / 100)  # 60 missing tokens at 100/min
        assert available(h) == pytest.approx(9.0)  # the refused request took no request
        assert available(h, "tokens_per_minute") == pytest.approx(20.0)


async def test_cost_above_burst_fails_at_once(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(tokens_per_minute=100) as h:
        big = rk.Cost(input_tokens=60, output_tokens=41)
        with pytest.raises(rk.RateLimitExceeded, match="exceeds the burst of 100") as info:
            h.try_acquire(big)
        assert info.value.wait == math.inf
        assert not info.value.retryable
        start = trio.current_time()
        with pytest.raises(rk.RateLimitExceeded):
            await h.acquire(big)
        with pytest.raises(rk.RateLimitExceeded):
            await h.reserve(big)
        assert trio.current_time() == start
        assert available(h, "tokens_per_minute") == pytest.approx(100.0)


async def test_try_acquire_reports_the_wait_behind_the_line(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=60, requests_burst=1) as h, trio.open_nursery() as n:
        assert h.try_acquire() == 0.0
        n.start_soon(h.acquire)
        await trio.testing.wait_all_tasks_blocked()
        # One waiter is ahead: this one would need its own second too. Nothing was taken.
        assert h.try_acquire() == pytest.approx(2.0)
        assert h.try_acquire() == pytest.approx(2.0)
        assert h.statistics().keys[0].rejected == 2


async def test_fifo_a_large_request_is_not_starved(mock_clock: trio.testing.MockClock) -> None:
    order: list[str] = []
    async with limiter(tokens_per_minute=600) as h:  # 10 tokens/s, burst 600
        h.try_acquire(rk.Cost(input_tokens=600))
        start = trio.current_time()

        async def big() -> None:
            await h.acquire(rk.Cost(input_tokens=100))
            order.append(f"big@{trio.current_time() - start:.1f}")

        async def small(i: int) -> None:
            await h.acquire(rk.Cost(input_tokens=1))
            order.append(f"small{i}")

        async with trio.open_nursery() as n:
            n.start_soon(big)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(5):
                n.start_soon(small, i)
                await trio.sleep(0.1)  # a stream of small requests that would always fit
        assert order[0] == "big@10.0"
        assert order[1:] == [f"small{i}" for i in range(5)]


async def test_a_cancelled_waiter_consumes_nothing(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=60, requests_burst=1) as h:
        h.try_acquire()
        start = trio.current_time()
        done: list[float] = []

        async def second() -> None:
            await h.acquire()
            done.append(trio.current_time() - start)

        async with trio.open_nursery() as n:
            with trio.move_on_after(0.5):
                async with trio.open_nursery() as inner:
                    inner.start_soon(h.acquire)
                    await trio.testing.wait_all_tasks_blocked()
                    n.start_soon(second)
                    await trio.sleep(1.0)  # cancelled at 0.5, before its turn came
        # The second waiter got the token the cancelled head never took: at 1.0, not 2.0.
        assert done == [pytest.approx(1.0)]
        stats = h.statistics().keys[0]
        assert (stats.cancelled, stats.admitted, stats.waiters) == (1, 2, 0)


async def test_max_wait(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=60, requests_burst=1) as h:
        h.try_acquire()
        start = trio.current_time()
        with pytest.raises(rk.RateLimitExceeded, match="max_wait") as info:
            await h.acquire(max_wait=0.5)
        assert info.value.wait == pytest.approx(1.0)
        assert info.value.retryable
        with pytest.raises(rk.RateLimitExceeded):
            await h.reserve(max_wait=0)
        assert trio.current_time() == start  # known up front: no sleeping first
        await h.acquire(max_wait=2.0)
        assert trio.current_time() - start == pytest.approx(1.0)
        with pytest.raises(ValueError, match="max_wait"):
            await h.acquire(max_wait=-1)


async def test_reserve_settle_refund_and_debt(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(tokens_per_minute=1000, requests_per_minute=100) as h:
        r = await h.reserve(rk.Cost(input_tokens=100, output_tokens=400))
        assert available(h, "tokens_per_minute") == pytest.approx(500.0)
        r.settle(rk.Usage(input_tokens=100, output_tokens=50))  # the real usage
        assert available(h, "tokens_per_minute") == pytest.approx(850.0)
        r.settle(rk.Cost(input_tokens=1000))  # idempotent: only the first settle counts
        r.refund()
        assert available(h, "tokens_per_minute") == pytest.approx(850.0)
        assert r.settled

        r2 = await h.reserve(rk.Cost(input_tokens=300))
        r2.refund()  # never sent: all back
        r2.settle(rk.Cost(input_tokens=1))
        assert available(h, "tokens_per_minute") == pytest.approx(850.0)
        assert available(h) == pytest.approx(16.0)  # r2's request came back too (burst 17)

        r3 = await h.reserve(rk.Cost(input_tokens=100))
        r3.settle(rk.Cost(input_tokens=1500))  # more than estimated: a debt
        assert available(h, "tokens_per_minute") == pytest.approx(-650.0)
        assert h.try_acquire(rk.Cost(input_tokens=10)) == pytest.approx(660 * 60 / 1000)


async def test_reservation_context_refunds_only_unsent_calls(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(tokens_per_minute=1000) as h:
        cost = rk.Cost(input_tokens=100)
        with pytest.raises(ValueError):
            async with await h.reserve(cost) as r:
                raise ValueError("failed before sending")
        assert r.released and r.settled
        assert available(h, "tokens_per_minute") == pytest.approx(1000.0)

        with trio.move_on_after(1.0):
            with await h.reserve(cost):
                await trio.sleep_forever()  # cancelled before sending: refunded
        assert available(h, "tokens_per_minute") == pytest.approx(1000.0)

        with pytest.raises(ValueError):
            async with await h.reserve(cost) as r:
                r.mark_sent()
                raise ValueError("failed after sending")
        assert available(h, "tokens_per_minute") == pytest.approx(900.0)

        async with await h.reserve(cost):
            pass  # no settle: the estimate stands
        assert available(h, "tokens_per_minute") == pytest.approx(800.0)


async def test_concurrency_permits_are_leases(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(max_concurrent=2) as h, trio.open_nursery() as n:
        r1 = await h.reserve()
        r2 = await h.reserve()
        got: list[rk.Reservation] = []

        async def third() -> None:
            got.append(await h.reserve())

        n.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        assert h.statistics().in_flight == 2 and h.statistics().waiters == 1
        r1.release()
        r1.release()  # idempotent: returns one permit only
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        assert h.statistics().in_flight == 2
        r2.release()
        got[0].release()
        assert h.statistics().in_flight == 0
        await h.acquire()  # rate-only admissions take no permit


async def test_a_dead_holder_returns_its_permit_a_dropped_one_warns(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(max_concurrent=1) as h:

        async def holder() -> None:
            async with await h.reserve():
                raise RuntimeError("the task dies mid-call")

        with pytest.raises(RuntimeError):
            await holder()
        assert h.statistics().in_flight == 0

        leaked = await h.reserve()
        assert h.statistics().in_flight == 1
        with pytest.warns(ResourceWarning, match="without release"):
            del leaked  # dropped without release (a bug in the caller)
            gc.collect()
        # A finaliser may run anywhere (another thread, after the run): it only warns.
        assert h.statistics().in_flight == 1


async def test_headers_clamp_and_lower_limits_but_never_raise_them(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=100, tokens_per_minute=10_000) as h:
        h.observe_headers(
            {
                "x-ratelimit-limit-requests": "50",
                "x-ratelimit-remaining-requests": "10",
                "x-ratelimit-limit-tokens": "1000000",
                "x-ratelimit-remaining-tokens": "999000",
                "anthropic-ratelimit-input-tokens-remaining": "0",  # not configured here
            }
        )
        (key,) = h.statistics().keys
        req, tok = key.limits
        # The request burst (17, ten seconds' worth of 100/min) scales with the limit: 9.
        assert (req.limit, req.effective_limit, req.available) == (100, 50, pytest.approx(9))
        assert (tok.effective_limit, tok.available) == (10_000, pytest.approx(10_000))
        assert [lim.name for lim in key.limits] == ["requests_per_minute", "tokens_per_minute"]
        h.observe_headers({"x-ratelimit-remaining-requests": "3"})
        assert available(h) == pytest.approx(3.0)  # clamped to the provider's remaining
        await trio.sleep(60)
        assert available(h) == pytest.approx(9.0)  # refills at, and holds, the provider's burst
        h.observe_headers({"x-ratelimit-limit-requests": "500"})
        assert h.statistics().keys[0].limits[0].effective_limit == 100  # back, not above


async def test_a_429_pauses_the_whole_key(mock_clock: trio.testing.MockClock) -> None:
    async with supervisor(endpoint(requests_per_minute=1000)) as sup:
        h = sup.limiter("ep")
        async with sup.open_subscription(stats=False) as events:
            start = trio.current_time()
            until = h.observe_rate_limited(2.0)
            assert until == pytest.approx(start + 2.0)
            assert h.try_acquire() == pytest.approx(2.0)
            assert h.statistics().paused
            assert sup.statistics().endpoints["ep"].limiter is not None
            await h.acquire()
            assert trio.current_time() - start == pytest.approx(2.0)
            event = events.receive_nowait()
            while not isinstance(event, rk.LimiterPaused):
                event = events.receive_nowait()
            assert (event.cause, event.endpoint, event.until) == (
                "retry_after",
                "ep",
                pytest.approx(start + 2.0),
            )
        now = trio.current_time()
        assert h.observe_rate_limited(headers={"retry-after-ms": "1500"}) == pytest.approx(
            now + 1.5
        )
        await trio.sleep(2)
        now = trio.current_time()
        reset = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7s"}
        assert h.observe_rate_limited(headers=reset) == pytest.approx(now + 7.0)
        await trio.sleep(8)
        now = trio.current_time()
        assert h.observe_rate_limited() == pytest.approx(now + 1.0)  # no hint: a short pause
        await trio.sleep(2)
        now = trio.current_time()
        assert h.observe_rate_limited(3600.0) == pytest.approx(now + 60.0)  # max_pause cap
        assert h.statistics().keys[0].pauses == 5


async def test_statistics_show_waiters_and_utilisation(mock_clock: trio.testing.MockClock) -> None:
    async with (
        supervisor(endpoint(requests_per_minute=10, requests_burst=10)) as sup,
        trio.open_nursery() as n,
    ):
        h = sup.limiter("ep")
        for _ in range(5):
            h.try_acquire()
        stats = sup.statistics().endpoints["ep"].limiter
        assert stats is not None
        assert stats.utilisation == pytest.approx(0.5)
        assert stats.redis_healthy is None and stats.mode == "local"
        for _ in range(7):
            n.start_soon(h.acquire)
        await trio.testing.wait_all_tasks_blocked()
        stats = sup.statistics().endpoints["ep"].limiter
        assert stats is not None and stats.waiters == 2 and stats.utilisation == 1.0
        await trio.sleep(60)
        assert h.statistics().waiters == 0
        assert h.statistics().keys[0].waited == 2


async def test_endpoints_sharing_an_api_key_share_its_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    key = rk.StaticCredential("sk-test-shared-0123456789")
    other = rk.StaticCredential("sk-test-other-0123456789")
    async with supervisor(
        endpoint("a", model="gpt-4o", credential=key, requests_per_minute=10),
        endpoint("b", model="gpt-4o-2024-08-06", credential=key, requests_per_minute=10),
        endpoint("c", model="gpt-4o", credential=other, requests_per_minute=10),
    ) as sup:
        a, b, c = sup.limiter("a"), sup.limiter("b"), sup.limiter("c")
        assert a.key() == b.key() != c.key()
        assert "sk-test" not in a.key()  # the fingerprint, never the key
        for _ in range(5):
            a.try_acquire()
            b.try_acquire()
        assert a.try_acquire() > 0 and b.try_acquire() > 0
        assert c.try_acquire() == 0.0
        assert a.try_acquire(model="gpt-4o-mini") == 0.0  # another family, another budget

        # Rotating to a new key moves to that key's budget.
        c.bind_credential(rk.Secret("sk-test-shared-0123456789"))
        assert c.key() == a.key()
        assert c.try_acquire() > 0


async def test_endpoints_sharing_a_key_enforce_the_stricter_limits(
    mock_clock: trio.testing.MockClock,
) -> None:
    key = rk.StaticCredential("sk-test-shared-0123456789")
    async with supervisor(
        endpoint("a", model="m", credential=key, requests_per_minute=10),
        endpoint("b", model="m", credential=key, requests_per_minute=4, tokens_per_minute=50),
    ) as sup:
        (stats,) = sup.limiter("a").statistics().keys
        assert [(lim.name, lim.limit) for lim in stats.limits] == [
            ("requests_per_minute", 4),
            ("tokens_per_minute", 50),
        ]


async def test_removing_an_endpoint_fails_its_waiters(mock_clock: trio.testing.MockClock) -> None:
    async with supervisor(endpoint(requests_per_minute=1, requests_burst=1, max_wait=None)) as sup:
        h = sup.limiter("ep")
        h.try_acquire()
        failed: list[BaseException] = []

        async def waiter() -> None:
            try:
                await h.acquire()
            except rk.LimiterUnavailable as exc:
                failed.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            sup.remove_endpoint("ep")
        assert len(failed) == 1 and "removed" in str(failed[0])
        with pytest.raises(rk.UnknownEndpoint):
            sup.limiter("ep")
        with pytest.raises(rk.UnknownEndpoint):
            h.try_acquire(model="other")


async def test_unlimited_endpoints_admit_everything(mock_clock: trio.testing.MockClock) -> None:
    async with limiter() as h:
        for _ in range(1000):
            assert h.try_acquire(rk.Cost(input_tokens=10**9)) == 0.0
        async with await h.reserve():
            pass
        assert h.statistics().utilisation == 0.0


async def test_adaptive_off_ignores_headers(mock_clock: trio.testing.MockClock) -> None:
    async with limiter(requests_per_minute=100, adaptive=False) as h:
        h.observe_headers({"x-ratelimit-remaining-requests": "0"})
        assert h.try_acquire() == 0.0
