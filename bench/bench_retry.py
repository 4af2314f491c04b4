"""P2: retry wrapper overhead when the first attempt succeeds.

A trivial coroutine is awaited N times bare, through ``rakka_trio.Retrier.run``, through a
tenacity ``@retry``-decorated function and through a ``stamina.retry``-decorated one; figures
are ns per call (best of several repeats) in the same run. Goal: rakka-trio <= 1 us and at least
10x faster than tenacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import trio
from _harness import Row, print_table

import rakka_trio as rk

N = 100_000
REPEATS = 5

Loop = Callable[[int], Awaitable[None]]


async def work() -> int:
    return 1


async def bare(n: int) -> None:
    for _ in range(n):
        await work()


def rakka_loop() -> Loop:
    retrier = rk.Retrier(rk.RetryPolicy(max_retries=3))

    async def loop(n: int) -> None:
        run = retrier.run
        for _ in range(n):
            await run(work)

    return loop


def tenacity_loop() -> Loop:
    import tenacity

    guarded = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential_jitter(initial=1, max=60),
        reraise=True,
    )(work)

    async def loop(n: int) -> None:
        for _ in range(n):
            await guarded()

    return loop


def stamina_loop() -> Loop:
    import stamina

    guarded = stamina.retry(on=Exception, attempts=4)(work)

    async def loop(n: int) -> None:
        for _ in range(n):
            await guarded()

    return loop


def measure(loop: Loop, runner: str) -> float | None:
    """Best ns/call of ``loop`` under ``runner`` ("trio" or "asyncio"); None if unsupported."""
    results: list[float] = []

    async def main() -> None:
        await loop(N // 20)
        for _ in range(REPEATS):
            t0 = time.perf_counter_ns()
            await loop(N)
            results.append((time.perf_counter_ns() - t0) / N)

    try:
        if runner == "trio":
            trio.run(main)
        else:
            asyncio.run(main())
    except Exception:
        return None
    return min(results)


def run() -> None:
    """Print the P2 table."""
    floor = measure(bare, "trio")
    assert floor is not None
    rows = [Row("bare await", floor, "ns", "floor (trio)")]
    rakka = measure(rakka_loop(), "trio")
    assert rakka is not None
    rows.append(Row("rakka-trio Retrier.run", rakka, "ns", f"{rakka / 1000:.2f} us"))
    for name, factory in (("tenacity", tenacity_loop), ("stamina", stamina_loop)):
        runner = "trio"
        value = measure(factory(), runner)
        if value is None:
            runner = "asyncio"
            value = measure(factory(), runner)
        if value is None:
            print(f"  ({name} did not run; skipped)")
            continue
        rows.append(Row(name, value, "ns", f"peer under {runner}; {value / rakka:.1f}x rakka-trio"))
    print_table(
        f"P2 retry wrapper, first attempt succeeds, ns per call (best of {REPEATS} x {N:,})",
        rows,
        baseline="bare await",
        goal="rakka-trio <= 1 us per call and >= 10x faster than tenacity",
    )


if __name__ == "__main__":
    run()
