"""Shared helpers for the benchmarks: alternating measurements, subprocess helpers and the
ratio tables ``just bench`` prints.

The machine is shared and noisy, so no absolute figure means much on its own. Every figure
is compared with a floor or peer measured **in the same run**, and the variants of one
comparison are measured in alternation (one of each per repeat, in a rotating order) with the
median taken over the repeats: load that drifts during the run then hits every variant alike.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import trio

__all__ = [
    "Goal",
    "LineReader",
    "Loop",
    "LoopSetup",
    "MockServerProcess",
    "Row",
    "Runner",
    "Variant",
    "alternate",
    "lazy",
    "median",
    "median_ns",
    "percentile",
    "plain",
    "print_table",
    "rate_and_cpu",
    "run_on",
]

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

Runner = Literal["trio", "asyncio"]
Loop = Callable[[int], Awaitable[None]]
"""``await loop(n)`` runs the code under test ``n`` times."""
LoopSetup = Callable[[], AbstractAsyncContextManager[Loop]]
"""Builds a :data:`Loop` inside the event loop (and tears its state down afterwards)."""
Goal = tuple[Literal["<=", "<", ">=", ">"], float]
"""A bound on a row's ratio, e.g. ``("<=", 3.0)``."""


# --- running and alternating ------------------------------------------------------------------


def run_on(runner: Runner, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``fn()`` to completion under a fresh Trio or asyncio event loop."""
    if runner == "trio":
        return trio.run(fn)
    return asyncio.run(fn())


def alternate(tasks: Mapping[K, Callable[[], T]], repeats: int) -> dict[K, list[T]]:
    """Call every task once per repeat, rotating the order each repeat; all results by name.

    Alternating spreads slow drifts of the machine's load over every task alike, and rotating
    the order keeps any one task from always following the same neighbour.
    """
    names = list(tasks)
    results: dict[K, list[T]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(tasks[name]())
    return results


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --- micro-benchmark loops ---------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One contender of a micro-benchmark: a loop run ``n`` times under ``runner``."""

    name: str
    runner: Runner
    setup: LoopSetup
    n: int


def plain(loop: Loop) -> LoopSetup:
    """A :data:`LoopSetup` for a loop that needs no state built inside the event loop."""

    @asynccontextmanager
    async def setup() -> AsyncIterator[Loop]:
        yield loop

    return setup


def lazy(make: Callable[[], Loop]) -> LoopSetup:
    """A :data:`LoopSetup` that calls ``make()`` inside the event loop (for objects that read
    the Trio clock when created)."""

    @asynccontextmanager
    async def setup() -> AsyncIterator[Loop]:
        yield make()

    return setup


def time_loop(variant: Variant) -> float:
    """Nanoseconds per iteration of one timed pass of ``variant`` (after a short warm-up)."""

    async def main() -> float:
        async with variant.setup() as loop:
            await loop(max(1, variant.n // 10))  # warm-up: caches, lazily created state
            gc.collect()
            t0 = time.perf_counter_ns()
            await loop(variant.n)
            return (time.perf_counter_ns() - t0) / variant.n

    return run_on(variant.runner, main)


def median_ns(variants: Sequence[Variant], repeats: int) -> dict[str, float]:
    """Median ns per iteration of each variant over ``repeats`` alternating passes."""
    runs = alternate({v.name: functools.partial(time_loop, v) for v in variants}, repeats)
    return {name: median(values) for name, values in runs.items()}


# --- request loops -------------------------------------------------------------------------------


async def rate_and_cpu(
    one_request: Callable[[], Awaitable[None]],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.0,
) -> tuple[float, float]:
    """Run ``concurrency`` loops of ``one_request``: ``warmup`` seconds untimed, then a window
    of ``duration`` seconds. Works under Trio and asyncio alike.

    Returns (requests completed in the window per second, client CPU microseconds per
    request). CPU is this process's CPU time (every thread), so the server must run in
    another process.
    """
    clock = time.perf_counter
    start = clock() + warmup
    end = start + duration
    done = 0
    cpu_start = 0.0

    async def worker() -> None:
        nonlocal done
        while clock() < end:
            await one_request()
            if clock() >= start:
                done += 1

    async def mark() -> None:
        nonlocal cpu_start
        await sleep(max(0.0, start - clock()))
        cpu_start = time.process_time()

    sleep = asyncio.sleep if _in_asyncio() else trio.sleep
    if _in_asyncio():
        await asyncio.gather(mark(), *(worker() for _ in range(concurrency)))
    else:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mark)
            for _ in range(concurrency):
                nursery.start_soon(worker)
    # The last requests overrun the window a little: rate over the real elapsed time.
    elapsed, cpu = clock() - start, time.process_time() - cpu_start
    return done / elapsed, cpu / max(done, 1) * 1e6


def _in_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --- subprocesses ------------------------------------------------------------------------------


class MockServerProcess:
    """The loopback mock provider (``_mock_server.py``) in its own process.

    ``with MockServerProcess(chunks=16) as mock: mock.url()`` is an OpenAI ``base_url``. With
    ``retry_after`` a second provider answers every request 429 with that Retry-After
    (``mock.url("limited")``). :meth:`stop` returns the server's report of what it saw.
    """

    def __init__(self, *, chunks: int = 16, retry_after: float | None = None) -> None:
        args = [sys.executable, str(HERE / "_mock_server.py"), "--chunks", str(chunks)]
        if retry_after is not None:
            args += ["--retry-after", repr(retry_after)]
        self._args = args
        self._proc: subprocess.Popen[str] | None = None
        self._ports: dict[str, int] = {}

    def __enter__(self) -> MockServerProcess:
        self._proc = subprocess.Popen(
            self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self._ports = json.loads(self._proc.stdout.readline())
        return self

    def url(self, which: str = "healthy") -> str:
        """The OpenAI ``base_url`` of the ``healthy`` or ``limited`` provider."""
        return f"http://127.0.0.1:{self._ports[which]}/v1"

    def stop(self) -> dict[str, Any]:
        """Stop the server; its report (requests seen per provider and, for the limited one,
        requests that arrived inside a Retry-After it had announced)."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        self._proc = None
        proc.stdin.close()
        line = proc.stdout.readline()
        proc.wait(timeout=10)
        report: dict[str, Any] = json.loads(line)
        return report

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


class LineReader:
    """Lines (without the newline) from a Trio byte stream, e.g. a child process's pipe."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def readline(self) -> str | None:
        """The next line; ``None`` at the end of the stream."""
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                if not self._buf:
                    return None
                line, self._buf = self._buf, b""
                return line.decode()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


# --- tables --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a benchmark table.

    The ratio is ``value`` over the value of the row named ``vs`` (default: the table's
    baseline row); ``goal`` is the bound that ratio should meet, checked in the table.
    """

    name: str
    value: float
    unit: str
    note: str = ""
    vs: str | None = None
    goal: Goal | None = None


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_table(
    title: str,
    rows: Sequence[Row],
    *,
    baseline: str,
    goal: str,
    higher_is_better: bool | None = False,
) -> None:
    """Print ``rows`` with each value's ratio to its ``vs`` row (default ``baseline``) and,
    where a row has a goal, whether the ratio meets it.

    ``higher_is_better`` only labels the table (``None``: no label, for tables mixing both
    kinds of figures); each row's goal states its own direction.
    """
    values = {r.name: r.value for r in rows}
    width = max(len(r.name) for r in rows) + 2
    vs_width = max(len(r.vs or baseline) for r in rows) + 2
    better = {None: "", True: "   (higher is better)", False: "   (lower is better)"}
    print(f"\n{title}")
    print(f"goal: {goal}{better[higher_is_better]}")
    print(
        f"{'what':<{width}}{'value':>12} {'unit':<5}{'ratio':>9}  {'vs':<{vs_width}}"
        f"{'goal':<14}note"
    )
    print("-" * (width + vs_width + 60))
    for r in rows:
        vs = r.vs or baseline
        base = values[vs]
        ratio = r.value / base if base else math.nan
        shown = "" if r.name == vs else "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"
        check = ""
        if r.goal is not None:
            op, bound = r.goal
            met = {
                "<=": ratio <= bound,
                "<": ratio < bound,
                ">=": ratio >= bound,
                ">": ratio > bound,
            }[op]
            check = f"{op}{bound:g}x {'ok' if met else 'MISS'}"
        vs_shown = "" if r.name == vs else vs
        print(
            f"{r.name:<{width}}{_fmt(r.value):>12} {r.unit:<5}{shown:>9}  {vs_shown:<{vs_width}}"
            f"{check:<14}{r.note}"
        )
