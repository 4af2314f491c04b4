"""Retry policy: backoff and jitter, server hints, caps, deadline and the retry budget."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio import Retrier, RetryBudget

pytestmark = pytest.mark.trio


def retrier(seed: int = 0, **policy: object) -> Retrier:
    return Retrier(rk.RetryPolicy(**policy), rng=random.Random(seed))  # type: ignore[arg-type]


def server_error(**kw: object) -> rk.ServerError:
    return rk.ServerError("boom", status=503, **kw)  # type: ignore[arg-type]


class Flaky:
    """Fails with the given errors in order, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return "done"


async def test_backoff_shapes(mock_clock: trio.testing.MockClock) -> None:
    none = retrier(jitter="none", initial_backoff=1, max_backoff=5, multiplier=2)
    assert [none.backoff(a, 0) for a in range(5)] == [1, 2, 4, 5, 5]
    full = retrier(jitter="full", initial_backoff=1, max_backoff=8)
    equal = retrier(jitter="equal", initial_backoff=1, max_backoff=8)
    for attempt in range(5):
        base = min(8, 2**attempt)
        for _ in range(50):
            assert 0 <= full.backoff(attempt, 0) <= base
            assert base / 2 <= equal.backoff(attempt, 0) <= base
    deco = retrier(jitter="decorrelated", initial_backoff=1, max_backoff=30)
    previous = 0.0
    for attempt in range(20):
        delay = deco.backoff(attempt, previous)
        assert 1 <= delay <= min(30, max(1, (previous or 1) * 3))
        previous = delay


async def test_clients_do_not_retry_in_lock_step(mock_clock: trio.testing.MockClock) -> None:
    delays = {
        Retrier(rk.RetryPolicy(jitter="full")).backoff(3, 0) for _ in range(20)
    }  # OS-seeded RNGs
    assert len(delays) > 15
    # ...while an injected RNG makes a run reproducible.
    assert retrier(7).backoff(3, 0) == retrier(7).backoff(3, 0)


async def test_retries_until_success(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=1, max_retries=3)
    fn = Flaky(server_error(), rk.Timeout(phase="read_gap"), rk.NetworkError("reset"))
    assert await r.run(fn) == "done"
    assert fn.calls == [0, 1, 3, 7]


async def test_gives_up_after_max_retries_with_last_error(
    mock_clock: trio.testing.MockClock,
) -> None:
    r = retrier(jitter="none", initial_backoff=1, max_retries=2)
    last = rk.ServerError("third", status=502)
    fn = Flaky(server_error(), server_error(), last, server_error())
    with pytest.raises(rk.ServerError) as info:
        await r.run(fn)
    assert info.value is last
    assert len(fn.calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        rk.QuotaExhausted("no credit", status=429, retry_after=1),
        rk.BadRequest("bad", status=400),
        rk.ContentFiltered("no", reason="safety"),
        rk.CircuitOpen("ep", state="open", opened_at=0, retry_at=5),
        ValueError("a bug, not a provider error"),
    ],
)
async def test_never_retried(mock_clock: trio.testing.MockClock, error: Exception) -> None:
    fn = Flaky(error)
    with pytest.raises(type(error)):
        await retrier().run(fn)
    assert len(fn.calls) == 1


async def test_server_hint_wins_and_is_capped(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=30, max_server_wait=10)
    fn = Flaky(rk.RateLimited("slow", status=429, retry_after=2.0))
    assert await r.run(fn) == "done"
    assert 2.0 <= fn.calls[1] <= 2.2  # the hint (plus at most 10 %), not the 30 s backoff
    too_long = Flaky(rk.RateLimited("slow", status=429, retry_after=60.0))
    with pytest.raises(rk.RateLimited):
        await r.run(too_long)
    assert len(too_long.calls) == 1  # fails fast instead of sleeping a minute
    decision = r.next_delay(
        rk.RateLimited("x", retry_after=60.0), attempt=0, started_at=trio.current_time()
    )
    assert decision.reason == "server wait exceeds max_server_wait"


async def test_hints_from_headers_in_precedence(mock_clock: trio.testing.MockClock) -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    err = rk.classify_http_status(429, headers, b"")
    decision = retrier(jitter="none").next_delay(err, attempt=0, started_at=0.0)
    assert 1.5 <= decision.delay <= 1.65


async def test_should_retry_header(mock_clock: trio.testing.MockClock) -> None:
    err = rk.classify_http_status(503, {"x-should-retry": "false"}, b"")
    assert not retrier().next_delay(err, attempt=0, started_at=0).retry
    ignoring = retrier(respect_should_retry=False)
    assert ignoring.next_delay(err, attempt=0, started_at=0).retry
    forced = rk.classify_http_status(400, {"x-should-retry": "true"}, b"")
    assert retrier().next_delay(forced, attempt=0, started_at=0).retry


async def test_per_error_caps(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=0.1, max_retries=5, per_error={"Timeout": 1})
    timeouts = Flaky(*(rk.Timeout(phase="connect") for _ in range(3)))
    with pytest.raises(rk.Timeout):
        await r.run(timeouts)
    assert len(timeouts.calls) == 2
    overloaded = Flaky(*(rk.Overloaded("busy", status=529) for _ in range(4)))
    assert await r.run(overloaded) == "done"  # ServerError subclasses use max_retries


async def test_deadline_skips_waits_that_would_overrun(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=4, max_retries=10, deadline=10)
    fn = Flaky(*(server_error() for _ in range(10)))
    with pytest.raises(rk.ServerError):
        await r.run(fn)
    # attempts at 0, 4 (wait 4), 12 would overrun 10 -> given up at t=4 without sleeping
    assert fn.calls == [0, 4]
    assert trio.current_time() == 4


async def test_deadline_bounds_slow_attempts(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=1, deadline=5)

    async def hangs() -> None:
        await trio.sleep_forever()

    with pytest.raises(rk.DeadlineExceeded) as info:  # a local limit, not a ProviderError
        await r.run(hangs)
    assert info.value.phase == "total"
    assert trio.current_time() == 5


async def test_cancellation_is_never_retried(mock_clock: trio.testing.MockClock) -> None:
    r = retrier(jitter="none", initial_backoff=1)
    fn = Flaky(server_error())
    with trio.move_on_after(0.5) as scope:
        await r.run(fn)  # cancelled while waiting to retry
    assert scope.cancelled_caught
    assert len(fn.calls) == 1


async def test_budget_limits_retry_storms(mock_clock: trio.testing.MockClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0)
    r = Retrier(
        rk.RetryPolicy(jitter="none", initial_backoff=0.001), rng=random.Random(1), budget=budget
    )
    attempts = 0

    async def always_fails() -> None:
        nonlocal attempts
        attempts += 1
        await trio.lowlevel.checkpoint()
        raise server_error()

    for _ in range(50):
        with pytest.raises(rk.ServerError):
            await r.run(always_fails)
    retries = attempts - 50
    assert retries <= 0.2 * 50 + 1
    assert retries >= 5
    # Budget recovers as new, healthy traffic arrives.
    requests, spent = budget.statistics()
    assert requests == pytest.approx(50, rel=0.05)
    assert spent == pytest.approx(retries, rel=0.05)


async def test_budget_minimum_allows_retries_at_low_traffic(
    mock_clock: trio.testing.MockClock,
) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0)  # 10 per 10 s window
    r = Retrier(rk.RetryPolicy(jitter="none", initial_backoff=0), budget=budget)
    fn = Flaky(server_error(), server_error(), server_error())
    assert await r.run(fn) == "done"


async def test_a_local_rate_limit_is_never_retried_on_the_same_endpoint() -> None:
    # The local limiter already made the call wait max_wait; a retry after its retry_after
    # would wait past max_wait (deployments move on to another endpoint instead).
    r = rk.Retrier(rk.RetryPolicy(max_retries=3))
    exc = rk.LocalRateLimited("would wait 12s", key="k", wait=12.0, provider="openai")
    assert exc.retryable
    decision = r.next_delay(exc, attempt=0, started_at=0.0)
    assert not decision.retry and "local rate limit" in decision.reason
