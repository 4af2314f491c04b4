"""P2: retry wrapper overhead when the first attempt succeeds.

A trivial coroutine is awaited N times bare, through ``rakka_trio.Retrier.run``, through a
tenacity ``@retry``-decorated function and through a ``stamina.retry``-decorated one; figures
are ns per call, the median of alternating repeats in the same run. Goal: rakka-trio <= 1 us and
at least 10x faster than tenacity.
"""

from __future__ import annotations

from _harness import Loop, Row, Variant, lazy, median_ns, plain, print_table

import rakka_trio as rk

N = 100_000
REPEATS = 15


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


def run() -> None:
    """Print the P2 table."""
    variants = [
        Variant("bare await", "trio", plain(bare), N),
        Variant("rakka-trio Retrier.run", "trio", lazy(rakka_loop), N),
        Variant("tenacity", "trio", lazy(tenacity_loop), N // 20),
        Variant("stamina", "trio", lazy(stamina_loop), N // 20),
    ]
    ns = median_ns(variants, REPEATS)
    rakka = ns["rakka-trio Retrier.run"]
    rows = [
        Row("bare await", ns["bare await"], "ns", "floor"),
        Row(
            "rakka-trio Retrier.run",
            rakka,
            "ns",
            f"{rakka / 1000:.2f} us per call (goal <= 1 us)",
            vs="tenacity",
            goal=("<=", 0.1),
        ),
        Row("tenacity", ns["tenacity"], "ns", f"peer; {ns['tenacity'] / rakka:.1f}x rakka-trio"),
        Row("stamina", ns["stamina"], "ns", f"peer; {ns['stamina'] / rakka:.1f}x rakka-trio"),
    ]
    print_table(
        f"P2 retry wrapper, first attempt succeeds, ns per call, all under trio.run "
        f"(median of {REPEATS} alternating repeats)",
        rows,
        baseline="bare await",
        goal="rakka-trio <= 1 us per call and >= 10x faster than tenacity",
    )


if __name__ == "__main__":
    run()
