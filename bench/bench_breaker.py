"""P1: closed-breaker guarded-call overhead.

Each loop awaits a trivial coroutine N times, bare or through a breaker that stays closed:
rakka-trio's ``call()`` and ``guard()``, and the peers purgatory, circuitbreaker, aiobreaker and
pybreaker (its ``calling()`` context manager around the await). Every figure is nanoseconds per
call, best of several repeats, all measured in this run; ratios are against the bare await.
The peers are asyncio libraries, so every loop runs under ``asyncio.run`` as well as
``trio.run`` where the library works there, and each is compared with the bare await measured
under the same event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import trio
from _harness import Row, print_table

import rakka_trio as rk

N = 200_000
REPEATS = 7


async def work() -> int:
    return 1


Loop = Callable[[int], Awaitable[None]]


async def bare(n: int) -> None:
    for _ in range(n):
        await work()


def rakka_call_loop() -> Loop:
    handle: rk.BreakerHandle | None = None

    async def loop(n: int) -> None:
        nonlocal handle
        if handle is None:  # the handle reads the Trio clock: create it inside the run
            handle = rk.BreakerHandle("bench", rk.BreakerConfig())
        call = handle.call
        for _ in range(n):
            await call(work)

    return loop


def rakka_guard_loop() -> Loop:
    handle: rk.BreakerHandle | None = None

    async def loop(n: int) -> None:
        nonlocal handle
        if handle is None:
            handle = rk.BreakerHandle("bench", rk.BreakerConfig())
        guard = handle.guard
        for _ in range(n):
            async with guard():
                await work()

    return loop


def purgatory_loop() -> Loop:
    import purgatory

    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)

    async def loop(n: int) -> None:
        for _ in range(n):
            async with await factory.get_breaker("bench"):
                await work()

    return loop


def circuitbreaker_loop() -> Loop:
    import circuitbreaker

    guarded = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(work)

    async def loop(n: int) -> None:
        for _ in range(n):
            await guarded()

    return loop


def aiobreaker_loop() -> Loop:
    import datetime

    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=30))

    async def loop(n: int) -> None:
        for _ in range(n):
            await breaker.call_async(work)

    return loop


def pybreaker_loop() -> Loop:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    async def loop(n: int) -> None:
        for _ in range(n):
            with breaker.calling():
                await work()

    return loop


def measure(loop: Loop, runner: str) -> float | None:
    """Best ns/call of ``loop`` under ``runner`` ("trio" or "asyncio"); None if unsupported."""
    results: list[float] = []

    async def main() -> None:
        await loop(N // 20)  # warm-up (and lets lazily created state settle)
        for _ in range(REPEATS):
            t0 = time.perf_counter_ns()
            await loop(N)
            results.append((time.perf_counter_ns() - t0) / N)

    try:
        if runner == "trio":
            trio.run(main)
        else:
            asyncio.run(main())
    except Exception:  # the peer does not run on this event loop
        return None
    return min(results)


def run() -> None:
    """Print the P1 table."""
    candidates: list[tuple[str, Callable[[], Loop]]] = [
        ("rakka-trio call()", rakka_call_loop),
        ("rakka-trio guard()", rakka_guard_loop),
        ("purgatory", purgatory_loop),
        ("circuitbreaker", circuitbreaker_loop),
        ("aiobreaker", aiobreaker_loop),
        ("pybreaker calling()", pybreaker_loop),
    ]
    for runner in ("trio", "asyncio"):
        floor = measure(bare, runner)
        assert floor is not None
        rows = [Row("bare await", floor, "ns", f"floor ({runner})")]
        for name, factory in candidates:
            if name.startswith("rakka") and runner == "asyncio":
                continue  # rakka-trio is Trio-native; its figures are in the trio table
            value = measure(factory(), runner)
            if value is None:
                print(f"  ({name} does not run under {runner}; skipped in this table)")
                continue
            rows.append(Row(name, value, "ns", "peer" if not name.startswith("rakka") else ""))
        print_table(
            f"P1 closed-breaker guarded call, ns per call, under {runner}.run "
            f"(best of {REPEATS} x {N:,})",
            rows,
            baseline="bare await",
            goal="rakka-trio <= 3x bare await and faster than every peer",
        )


if __name__ == "__main__":
    run()
