"""P1: closed-breaker guarded-call overhead.

Each loop awaits a trivial coroutine N times, bare or through a breaker that stays closed:

* rakka-trio's ``await h.call(work)``;
* the raw permit path a caller writes by hand: ``h.check()``, ``await work()``,
  ``h.record_success()``;
* ``async with h.guard(): await work()``;
* the peers purgatory, circuitbreaker, aiobreaker and pybreaker (its ``calling()`` context
  manager around the await), under asyncio, the event loop they are written for.

Every variant (the bare await under both event loops included) is timed once per repeat, in a
rotating order, and the table shows the median over the repeats. Each figure's ratio is
against the bare await under the same event loop, measured in the same repeats.
"""

from __future__ import annotations

import datetime

from _harness import Goal, Loop, Row, Variant, lazy, median_ns, plain, print_table

import rakka_trio as rk

N = 100_000
REPEATS = 15


async def work() -> int:
    return 1


async def bare(n: int) -> None:
    for _ in range(n):
        await work()


# The handle reads the Trio clock: each loop creates it inside the run (see ``lazy``).


def rakka_call() -> Loop:
    call = rk.BreakerHandle("bench", rk.BreakerConfig()).call

    async def loop(n: int) -> None:
        for _ in range(n):
            await call(work)

    return loop


def rakka_raw() -> Loop:
    h = rk.BreakerHandle("bench", rk.BreakerConfig())
    check, record_success = h.check, h.record_success

    async def loop(n: int) -> None:
        for _ in range(n):
            permit = check()
            await work()
            record_success(permit)

    return loop


def rakka_guard() -> Loop:
    guard = rk.BreakerHandle("bench", rk.BreakerConfig()).guard

    async def loop(n: int) -> None:
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


BARE_TRIO = "bare await (trio)"
BARE_ASYNCIO = "bare await (asyncio)"


def run() -> None:
    """Print the P1 table."""
    variants = [
        Variant(BARE_TRIO, "trio", plain(bare), N),
        Variant(BARE_ASYNCIO, "asyncio", plain(bare), N),
        Variant("rakka-trio call()", "trio", lazy(rakka_call), N),
        Variant("rakka-trio check()+record_success()", "trio", lazy(rakka_raw), N),
        Variant("rakka-trio async with guard()", "trio", lazy(rakka_guard), N),
        Variant("purgatory", "asyncio", lazy(purgatory_loop), N // 4),
        Variant("circuitbreaker", "asyncio", lazy(circuitbreaker_loop), N // 4),
        Variant("aiobreaker", "asyncio", lazy(aiobreaker_loop), N // 4),
        Variant("pybreaker calling()", "asyncio", lazy(pybreaker_loop), N // 10),
    ]
    ns = median_ns(variants, REPEATS)
    goals: dict[str, Goal] = {
        "rakka-trio call()": ("<=", 3.0),
        "rakka-trio check()+record_success()": ("<=", 3.0),
        "rakka-trio async with guard()": ("<=", 5.0),
    }
    rows = []
    for v in variants:
        base = BARE_TRIO if v.runner == "trio" else BARE_ASYNCIO
        role = "floor" if v.name.startswith("bare") else "peer" if v.runner == "asyncio" else ""
        rows.append(Row(v.name, ns[v.name], "ns", role, vs=base, goal=goals.get(v.name)))
    slowest_rk = max(ns[name] / ns[BARE_TRIO] for name in goals)
    fastest_peer = min(
        ns[v.name] / ns[BARE_ASYNCIO]
        for v in variants
        if v.runner == "asyncio" and v.name != BARE_ASYNCIO
    )
    print_table(
        f"P1 closed-breaker guarded call, ns per call (median of {REPEATS} alternating "
        f"repeats; rakka-trio under trio.run, peers under asyncio.run)",
        rows,
        baseline=BARE_TRIO,
        goal="call() <= 3x, raw check()+record_success() <= 3x, guard() <= 5x the bare await; "
        "faster than every peer",
    )
    verdict = "ok" if slowest_rk < fastest_peer else "MISS"
    print(
        f"slowest rakka-trio path {slowest_rk:.2f}x vs fastest peer {fastest_peer:.2f}x "
        f"(each vs the bare await on its own loop): {verdict}"
    )


if __name__ == "__main__":
    run()
