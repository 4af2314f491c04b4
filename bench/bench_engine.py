"""P8 (scale): many endpoints, and event fan-out to in-process subscribers.

P8a: start a supervisor with 1,000 endpoints (config validation, breaker tasks, limiters,
engines and meters) and measure the time until every task is idle, and the Python memory per
endpoint (tracemalloc, in a separate run so tracing does not distort the timing).

P8b: stream requests through the engine (``endpoint.submit``) against the mock provider in its
own process, with 0 subscribers and then with 50 (49 reading, one that never reads) while a
side task floods the event bus with breaker commands and transitions. Publishing never blocks,
so request throughput should be unchanged; the silent subscriber only loses old events.
The engine path's throughput against the hand-written floor is P5 (``bench_pipeline``); the
control-plane viewers' cost is in ``bench_control``.
"""

from __future__ import annotations

import functools
import gc
import time
import tracemalloc
from contextlib import AsyncExitStack

import trio
import trio.testing
from _harness import MockServerProcess, Row, alternate, median, print_table, rate_and_cpu

import rakka_trio as rk

ENDPOINTS = 1000
CONCURRENCY = 16
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


def medians(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The median of each field over the runs."""
    return tuple(median(field) for field in zip(*runs, strict=True))


def run_scale() -> None:
    """P8a: start time and memory of 1,000 endpoints."""
    runs = alternate(
        {
            "one": functools.partial(trio.run, start_supervisor, 1),
            "many": functools.partial(trio.run, start_supervisor, ENDPOINTS),
        },
        REPEATS,
    )
    one = median([start for _, start in runs["one"]])
    build, start = medians(list(runs["many"]))
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
        f"meter each; median of {REPEATS} alternating repeats)",
        rows,
        baseline="start, 1 endpoint",
        goal="start < 1 s",
    )


def run_fanout(base_url: str) -> None:
    """P8b: requests/s with 0, 1 silent, and 50 subscribers (one never reads) during an
    event flood."""
    runs = alternate(
        {
            count: functools.partial(trio.run, fanout_loop, base_url, count)
            for count in (0, 1, SUBSCRIBERS)
        },
        REPEATS,
    )
    q_rate, q_pub, _, _ = medians(list(runs[0]))
    s_rate, s_pub, _, s_dropped = medians(list(runs[1]))
    l_rate, l_pub, l_first, l_dropped = medians(list(runs[SUBSCRIBERS]))
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
        f"(one subscriber never reads; median of {REPEATS} alternating {DURATION:g} s runs)",
        rows,
        baseline="engine requests, 0 subscribers",
        goal="a slow subscriber never slows requests (ratio ~1.0; readers cost only their CPU)",
        higher_is_better=True,
    )


def run() -> None:
    """Print the P8 tables (scale and in-process event fan-out)."""
    run_scale()
    with MockServerProcess(chunks=16) as mock:
        run_fanout(mock.url())
        mock.stop()


if __name__ == "__main__":
    run()
