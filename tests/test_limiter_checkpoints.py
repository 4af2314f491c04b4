"""The awaited admission's checkpoint contract: cancellation is checked on entry, an admission
that need not wait yields to the scheduler only every 32nd time on a key (so a loop of them
still lets other tasks run and sees a cancellation), and nobody overtakes a waiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import rakka_trio as rk

pytestmark = pytest.mark.trio

HUGE = 10**12  # limits that never run out: nothing ever has to wait
PER_YIELD = 32  # the documented number of admissions between two yields


@asynccontextmanager
async def limiter(**limits: Any) -> AsyncIterator[rk.LimiterHandle]:
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="ep",
                provider="openai",
                base_url="http://127.0.0.1:9/v1",
                limits=rk.RateLimits(**limits),
            )
        ]
    )
    async with rk.open_supervisor(cfg) as sup:
        yield sup.limiter("ep")


@asynccontextmanager
async def ticker() -> AsyncIterator[list[int]]:
    """A task that counts how often it gets to run (it yields after every count)."""
    ticks = [0]

    async def tick() -> None:
        while True:
            ticks[0] += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.lowlevel.checkpoint()  # let it start
        yield ticks
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["acquire", "reserve"])
async def test_admissions_that_need_not_wait_yield_only_every_32nd_time(
    mock_clock: trio.testing.MockClock, path: str
) -> None:
    rounds = 10 * PER_YIELD
    async with (
        limiter(requests_per_minute=HUGE, tokens_per_minute=HUGE, max_concurrent=4) as h,
        ticker() as ticks,
    ):
        before = ticks[0]
        for _ in range(rounds):
            if path == "acquire":
                await h.acquire(rk.Cost(input_tokens=10))
            else:
                async with h.reserve(rk.Cost(input_tokens=10)):
                    pass
        ran = ticks[0] - before
    # One yield per 32 admissions: the other task ran about ten times, not once per call,
    # and it did run (a loop of admissions cannot starve it).
    assert rounds // PER_YIELD - 1 <= ran <= rounds // PER_YIELD + 1
    assert h.statistics().keys[0].admitted == rounds


async def test_a_loop_of_admissions_sees_a_cancellation_by_its_second_yield() -> None:
    admitted = 0
    async with limiter(requests_per_minute=HUGE) as h:

        async def cancel() -> None:
            scope.cancel()  # runs at the loop's first yield

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel)
                for _ in range(100 * PER_YIELD):  # bounded: a missing yield fails, not hangs
                    await h.acquire()
                    admitted += 1
        assert scope.cancelled_caught
        # The canceller runs at the first yield, before or after the loop's next turn (Trio
        # picks the order within a batch): the loop ends by the second yield at the latest.
        assert PER_YIELD <= admitted <= 2 * PER_YIELD
        assert h.statistics().keys[0].admitted == admitted


async def test_a_loop_of_admissions_sees_a_deadline_pass() -> None:
    # Deadlines are noticed when the scheduler runs: the periodic yield lets it.
    admitted = 0
    async with limiter(requests_per_minute=HUGE) as h:
        with trio.move_on_after(0.05) as scope:
            for _ in range(10**7):  # bounded: a missing yield fails, not hangs
                await h.acquire()
                admitted += 1
        assert scope.cancelled_caught
        assert admitted < 10**7


@pytest.mark.parametrize("path", ["acquire", "reserve"])
async def test_a_cancelled_caller_takes_nothing_even_with_budget_there(
    mock_clock: trio.testing.MockClock, path: str
) -> None:
    async with limiter(requests_per_minute=60, max_concurrent=1) as h:
        with trio.CancelScope() as scope:
            scope.cancel()
            if path == "acquire":
                await h.acquire()
            else:
                await h.reserve()
        assert scope.cancelled_caught
        (key,) = h.statistics().keys
        (requests,) = key.limits
        assert (key.admitted, key.in_flight, requests.available) == (0, 0, 10)


async def test_a_caller_that_finds_budget_never_overtakes_a_waiter(
    mock_clock: trio.testing.MockClock,
) -> None:
    order: list[tuple[str, float]] = []
    async with limiter(requests_per_minute=60, requests_burst=1) as h:  # one a second
        await h.acquire()
        start = trio.current_time()

        async def waiter() -> None:
            await h.acquire()
            order.append(("waiter", trio.current_time() - start))

        async def late() -> None:
            # Arrives exactly when the budget for the waiter's turn is back.
            await trio.sleep_until(start + 1.0)
            await h.acquire()
            order.append(("late", trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(late)
        assert order == [("waiter", pytest.approx(1.0)), ("late", pytest.approx(2.0))]
        # With the line empty again, a caller that finds budget is admitted at once.
        await trio.sleep(1.0)
        at = trio.current_time()
        await h.acquire()
        assert trio.current_time() == at


async def test_an_awaited_admission_one_limit_refuses_takes_from_neither(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with limiter(requests_per_minute=60, tokens_per_minute=100, max_wait=None) as h:
        await h.acquire(rk.Cost(input_tokens=80))  # immediate: 9 requests, 20 tokens left
        start = trio.current_time()
        admitted_at: list[float] = []

        async def second() -> None:
            await h.acquire(rk.Cost(input_tokens=80))  # the request fits, the tokens do not
            admitted_at.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            (key,) = h.statistics().keys
            assert [lim.available for lim in key.limits] == [pytest.approx(9), pytest.approx(20)]
        assert admitted_at == [pytest.approx(60 * 60 / 100)]  # 60 tokens missing at 100/min
