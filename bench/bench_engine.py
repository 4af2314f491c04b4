"""P8 (scale) and P5 through the engine path.

P8a: start a supervisor with 1,000 endpoints (config validation, breaker tasks, limiters,
engines and meters) and measure the time until every task is idle, and the Python memory per
endpoint (tracemalloc, in a separate run so tracing does not distort the timing).

P8b: stream requests through the engine (``endpoint.submit``) against the mock provider in its
own process, with 0 subscribers and then with 50 (49 reading, one that never reads) while a
side task floods the event bus with breaker commands and transitions. Publishing never blocks,
so request throughput should be unchanged; the silent subscriber only loses old events.

P5 again: the same streaming loop as ``bench_pipeline`` through ``endpoint.submit`` (queue,
worker, chunk channel, handle) next to ``Endpoint.stream`` and a bare httpx loop.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import trio
import trio.testing
from _harness import Row, print_table, rate_and_cpu
from bench_pipeline import CONCURRENCY, bare_loop, pipeline_loop

import rakka_trio as rk

HERE = Path(__file__).resolve().parent
ENDPOINTS = 1000
SUBSCRIBERS = 50
DURATION = 2.0
REPEATS = 3
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])


def scale_config(n: int) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=f"ep-{i:04d}",
                provider="openai",
                base_url="http://127.0.0.1:9/v1",
                model="gpt-4o-mini",
                limits=rk.RateLimits(requests_per_minute=600, tokens_per_minute=100_000),
            )
            for i in range(n)
        ]
    )


async def start_supervisor(n: int) -> tuple[float, float]:
    """(seconds to build the config, seconds until the supervisor's tasks are all idle)."""
    t0 = time.perf_counter()
    cfg = scale_config(n)
    t1 = time.perf_counter()
    async with rk.open_supervisor(cfg) as sup:
        await trio.testing.wait_all_tasks_blocked()
        t2 = time.perf_counter()
        assert len(sup.endpoint_names) == n
    return t1 - t0, t2 - t1


async def supervisor_memory(n: int) -> float:
    """Bytes of Python memory held by a running supervisor of ``n`` endpoints."""
    cfg = scale_config(n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with rk.open_supervisor(cfg) as sup:
        await trio.testing.wait_all_tasks_blocked()
        sup.statistics()  # what a stats tick allocates stays out: only the live state counts
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return float(held)


def endpoint_config(base_url: str, name: str = "bench") -> rk.EndpointConfig:
    return rk.EndpointConfig(name=name, provider="openai", base_url=base_url, model="bench")


async def engine_loop(base_url: str) -> tuple[float, float]:
    """(completed streams per second, client CPU microseconds per stream) through submit."""
    cfg = rk.SupervisorConfig(endpoints=[endpoint_config(base_url)])
    async with rk.open_supervisor(cfg) as sup:
        return await _engine_traffic(sup)


async def _engine_traffic(sup: rk.Supervisor) -> tuple[float, float]:
    ep = sup.endpoint("bench")

    async def one() -> None:
        async with await ep.submit(REQUEST) as chunks:
            async for _ in chunks:
                pass

    return await rate_and_cpu(one, concurrency=CONCURRENCY, duration=DURATION)


async def fanout_loop(base_url: str, subscribers: int) -> tuple[float, int, int, int]:
    """(requests/s through the engine, events published, delivered to one reading subscriber,
    dropped by the one that never reads) with ``subscribers`` subscribers and an event flood."""
    cfg = rk.SupervisorConfig(
        endpoints=[endpoint_config(base_url), endpoint_config(base_url, "noisy")],
        stats_interval=0.05,
        event_buffer=256,
    )
    async with rk.open_supervisor(cfg) as sup, AsyncExitStack() as stack:
        subscribe = sup.open_subscription
        subs = [await stack.enter_async_context(subscribe()) for _ in range(subscribers)]
        nursery = await stack.enter_async_context(trio.open_nursery())
        delivered = [0] * subscribers

        async def reader(i: int) -> None:
            async for _ in subs[i]:
                delivered[i] += 1

        for i in range(subscribers - 1):  # the last one never reads
            nursery.start_soon(reader, i)

        async def flood() -> None:
            # Operator commands on a spare endpoint: a Command and a Transition each time.
            while True:
                sup.force_open("noisy", 60.0, reason="bench")
                sup.reset("noisy")
                await trio.sleep(0.001)

        nursery.start_soon(flood)
        published = sup.statistics().events_published
        rate, _ = await _engine_traffic(sup)
        published = sup.statistics().events_published - published
        dropped = subs[-1].dropped if subscribers else 0
        first = delivered[0] if subscribers > 1 else 0
        for sub in subs:
            sub.close()
        nursery.cancel_scope.cancel()
    return rate, published, first, dropped


def best(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    return max(runs, key=lambda r: r[0])


def with_mock_server(fn: Callable[[str], None]) -> None:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_mock_server.py"), "16"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        fn(f"http://127.0.0.1:{port}/v1")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)


def run_scale() -> None:
    """P8a: start time and memory of 1,000 endpoints."""
    one = min(trio.run(start_supervisor, 1)[1] for _ in range(REPEATS))
    starts = [trio.run(start_supervisor, ENDPOINTS) for _ in range(REPEATS)]
    build, start = min(starts, key=lambda r: r[1])
    mem_one = trio.run(supervisor_memory, 1)
    mem_many = trio.run(supervisor_memory, ENDPOINTS)
    per_endpoint = (mem_many - mem_one) / (ENDPOINTS - 1)
    rows = [
        Row("start, 1 endpoint", one * 1e3, "ms", "floor: supervisor and stats task"),
        Row(
            f"start, {ENDPOINTS:,} endpoints",
            start * 1e3,
            "ms",
            f"+{build * 1e3:.0f} ms to validate the config; "
            f"{per_endpoint / 1024:.1f} KiB Python memory per endpoint",
        ),
    ]
    print_table(
        f"P8 {ENDPOINTS:,} endpoints under one supervisor (breaker task, limiter, engine and "
        f"meter each; best of {REPEATS})",
        rows,
        baseline="start, 1 endpoint",
        goal="start < 1 s",
    )


def run_fanout(base_url: str) -> None:
    """P8b: requests/s with 0, 1 silent, and 50 subscribers (one never reads) during an
    event flood."""
    runs: dict[int, list[tuple[float, ...]]] = {0: [], 1: [], SUBSCRIBERS: []}
    for _ in range(REPEATS):  # interleaved so drift on a shared machine hits all alike
        for count in runs:
            runs[count].append(trio.run(fanout_loop, base_url, count))
        time.sleep(0.2)
    q_rate, q_pub, _, _ = best(runs[0])
    s_rate, s_pub, _, s_dropped = best(runs[1])
    l_rate, l_pub, l_first, l_dropped = best(runs[SUBSCRIBERS])
    rows = [
        Row(
            "engine requests, 0 subscribers",
            q_rate,
            "r/s",
            f"{q_pub / DURATION:,.0f} events/s published",
        ),
        Row(
            "engine requests, 1 silent subscriber",
            s_rate,
            "r/s",
            f"{s_pub / DURATION:,.0f} events/s; it never reads and dropped {s_dropped:,}",
        ),
        Row(
            f"engine requests, {SUBSCRIBERS} subscribers",
            l_rate,
            "r/s",
            f"{l_pub / DURATION:,.0f} events/s; each of {SUBSCRIBERS - 1} readers got "
            f"~{l_first:,}, the silent one dropped {l_dropped:,}",
        ),
    ]
    print_table(
        f"P8 event fan-out while {CONCURRENCY} request loops stream through the engine "
        f"(one subscriber never reads; best of {REPEATS} x {DURATION:g} s)",
        rows,
        baseline="engine requests, 0 subscribers",
        goal="a slow subscriber never slows requests (ratio ~1.0; readers cost only their CPU)",
        higher_is_better=True,
    )


def run_pipeline(base_url: str) -> None:
    """P5 through the engine path."""
    results: dict[str, list[tuple[float, float]]] = {"bare": [], "stream": [], "submit": []}
    loops: dict[str, Callable[[str], Awaitable[tuple[float, float]]]] = {
        "bare": bare_loop,
        "stream": pipeline_loop,
        "submit": engine_loop,
    }
    for _ in range(REPEATS):
        for name, loop in loops.items():
            results[name].append(trio.run(loop, base_url))
        time.sleep(0.2)
    (bare, bare_cpu), (stream, stream_cpu), (submit, submit_cpu) = (
        max(results[name]) for name in ("bare", "stream", "submit")
    )
    rows = [
        Row("bare httpx stream loop", bare, "r/s", f"floor; client CPU {bare_cpu:.0f} us/req"),
        Row(
            "Endpoint.stream",
            stream,
            "r/s",
            f"client CPU {stream_cpu:.0f} us/req ({stream_cpu / bare_cpu:.2f}x bare)",
        ),
        Row(
            "endpoint.submit (engine)",
            submit,
            "r/s",
            f"client CPU {submit_cpu:.0f} us/req ({submit_cpu / bare_cpu:.2f}x bare)",
        ),
    ]
    print_table(
        f"P5 through the engine path: streamed completions per second, {CONCURRENCY} loops, "
        f"16 chunks each, mock provider in its own process (best of {REPEATS} x "
        f"{DURATION:g} s)",
        rows,
        baseline="bare httpx stream loop",
        goal="engine path >= 85% of bare httpx throughput",
        higher_is_better=True,
    )


def run() -> None:
    """Print the P8 tables and P5 through the engine."""
    run_scale()

    def traffic(base_url: str) -> None:
        run_fanout(base_url)
        run_pipeline(base_url)

    with_mock_server(traffic)


if __name__ == "__main__":
    run()
