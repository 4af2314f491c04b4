"""Shared helpers for the benchmarks: timing loops and the ratio tables ``just bench`` prints.

Every figure is measured in the same run as the floor or peer it is compared with, so the
ratios hold on any machine even when the absolute numbers do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

__all__ = ["Row", "best_of", "best_of_async", "print_table", "rate_and_cpu"]


class Row:
    """One line of a benchmark table."""

    def __init__(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.name = name
        self.value = value
        self.unit = unit
        self.note = note


def best_of(fn: Callable[[int], None], n: int, repeats: int = 7) -> float:
    """Run ``fn(n)`` ``repeats`` times; return the best time per iteration in nanoseconds.

    The minimum is the least noisy estimate of the cost on a shared machine.
    """
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        times.append((time.perf_counter_ns() - t0) / n)
    return min(times)


def best_of_async(fn: Callable[[int], Awaitable[None]], n: int, repeats: int = 7) -> float:
    """Like :func:`best_of` for an async loop, run inside one ``trio.run``."""
    results: list[float] = []

    async def main() -> None:
        await fn(max(1, n // 10))  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            await fn(n)
            results.append((time.perf_counter_ns() - t0) / n)

    trio.run(main)
    return min(results)


async def rate_and_cpu(
    one_request: Callable[[], Awaitable[None]], *, concurrency: int, duration: float
) -> tuple[float, float]:
    """Run ``concurrency`` loops of ``one_request`` for ``duration`` seconds.

    Returns (completed requests per second, client CPU microseconds per request).
    """
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while trio.current_time() < deadline:
            await one_request()
            done += 1

    start, cpu = trio.current_time(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, start + duration)
    elapsed, cpu = trio.current_time() - start, time.process_time() - cpu
    return done / elapsed, cpu / max(done, 1) * 1e6


def print_table(
    title: str,
    rows: Sequence[Row],
    *,
    baseline: str,
    goal: str,
    higher_is_better: bool = False,
) -> None:
    """Print ``rows`` with each value's ratio to the ``baseline`` row."""
    base = next(r for r in rows if r.name == baseline).value
    width = max(len(r.name) for r in rows) + 2
    print(f"\n{title}")
    print(f"goal: {goal}")
    print(f"{'what':<{width}}{'value':>14}  {'ratio vs ' + baseline:>22}  note")
    print("-" * (width + 50))
    for r in rows:
        ratio = r.value / base if base else float("nan")
        print(f"{r.name:<{width}}{r.value:>10.1f} {r.unit:<3}  {ratio:>21.2f}x  {r.note}")


def median(values: Sequence[float]) -> float:
    """Median helper re-exported for benchmark modules."""
    return statistics.median(values)
