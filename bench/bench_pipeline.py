"""P5: the full request pipeline against what a user writes by hand and the openai SDK.

The loopback mock provider runs in its own process, so the client CPU measured here is the
client's alone. The same number of concurrent loops stream the same OpenAI chat completions
(16 chunks and a usage chunk each) with:

* the floor, what a user writes by hand: an ``httpx`` streaming request whose SSE lines are
  split by ``aiter_lines()`` and whose every ``data:`` payload goes through ``json.loads``
  (under Trio, and under asyncio for reference);
* rakka-trio ``Endpoint.stream`` (breaker, limiter, retry bookkeeping, SSE decoding, the
  provider adapter, typed chunks) and ``endpoint.submit`` (the engine: queue, worker, chunk
  channel), under Trio;
* the official ``openai`` SDK, ``AsyncOpenAI(...).chat.completions.create(stream=True)``,
  under asyncio.

Each variant runs in ~1 s windows (after an untimed warm-up on fresh connections), one window
per variant per repeat in a rotating order, and the table shows medians over the repeats, so
load drifting on a shared machine hits every variant alike. Figures: completed requests per
second (goal: >= 0.90x the Trio floor) and client CPU time per request (process CPU over the
window; goal: <= 0.5x the openai SDK).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
from _harness import (
    MockServerProcess,
    Row,
    Runner,
    alternate,
    median,
    print_table,
    rate_and_cpu,
    run_on,
)

import rakka_trio as rk

CONCURRENCY = 16
WINDOW = 1.0
WARMUP = 0.3
REPEATS = 7
CHUNKS = 16
MESSAGES = [{"role": "user", "content": "hello"}]
BODY = {
    "model": "bench",
    "messages": MESSAGES,
    "stream": True,
    "stream_options": {"include_usage": True},
}
REQUEST = rk.ChatRequest(messages=MESSAGES)

Measure = Callable[[str], Coroutine[Any, Any, tuple[float, float]]]


async def _measure(one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    return await rate_and_cpu(one, concurrency=CONCURRENCY, duration=WINDOW, warmup=WARMUP)


async def floor_loop(base_url: str) -> tuple[float, float]:
    """httpx streaming, lines split by httpx, ``json.loads`` on every event's data."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one() -> None:
            async with client.stream("POST", "/chat/completions", json=BODY) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        if data == "[DONE]":
                            break
                        json.loads(data)

        return await _measure(one)


def _config(base_url: str) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(name="bench", provider="openai", base_url=base_url, model="bench")
        ]
    )


async def stream_loop(base_url: str) -> tuple[float, float]:
    """rakka-trio ``Endpoint.stream``."""
    async with rk.open_supervisor(_config(base_url)) as sup:
        ep = sup.endpoint("bench")

        async def one() -> None:
            async with ep.stream(REQUEST) as chunks:
                async for _ in chunks:
                    pass

        return await _measure(one)


async def submit_loop(base_url: str) -> tuple[float, float]:
    """rakka-trio ``endpoint.submit`` (the engine path)."""
    async with rk.open_supervisor(_config(base_url)) as sup:
        ep = sup.endpoint("bench")

        async def one() -> None:
            async with await ep.submit(REQUEST) as chunks:
                async for _ in chunks:
                    pass

        return await _measure(one)


async def openai_loop(base_url: str) -> tuple[float, float]:
    """The official SDK streaming the same completions (asyncio)."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key="x") as client:

        async def one() -> None:
            stream = await client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass

        return await _measure(one)


FLOOR = "httpx + json.loads (trio)"
FLOOR_ASYNCIO = "httpx + json.loads (asyncio)"
STREAM = "rakka-trio Endpoint.stream"
SUBMIT = "rakka-trio endpoint.submit"
OPENAI = "openai SDK stream (asyncio)"
VARIANTS: dict[str, tuple[Runner, Measure]] = {
    FLOOR: ("trio", floor_loop),
    FLOOR_ASYNCIO: ("asyncio", floor_loop),
    STREAM: ("trio", stream_loop),
    SUBMIT: ("trio", submit_loop),
    OPENAI: ("asyncio", openai_loop),
}


def run() -> None:
    """Print the P5 table."""
    with MockServerProcess(chunks=CHUNKS) as mock:
        base_url = mock.url()
        runs = alternate(
            {
                name: functools.partial(run_on, runner, functools.partial(fn, base_url))
                for name, (runner, fn) in VARIANTS.items()
            },
            REPEATS,
        )
        mock.stop()
    rate = {name: median([r for r, _ in results]) for name, results in runs.items()}
    cpu = {name: median([c for _, c in results]) for name, results in runs.items()}
    rows = [
        Row(FLOOR, rate[FLOOR], "r/s", "floor: what a user writes by hand"),
        Row(STREAM, rate[STREAM], "r/s", goal=(">=", 0.9)),
        Row(SUBMIT, rate[SUBMIT], "r/s", goal=(">=", 0.9)),
        Row(FLOOR_ASYNCIO, rate[FLOOR_ASYNCIO], "r/s", "the floor under asyncio"),
        Row(OPENAI, rate[OPENAI], "r/s", "peer"),
    ]
    cpu_floor, cpu_peer = "client CPU: " + FLOOR, "client CPU: " + OPENAI
    rows += [
        Row(cpu_floor, cpu[FLOOR], "µs", "floor, per request", vs=cpu_floor),
        Row(cpu_peer, cpu[OPENAI], "µs", "peer, per request", vs=cpu_floor),
    ]
    for name in (STREAM, SUBMIT):
        rows.append(
            Row(
                "client CPU: " + name,
                cpu[name],
                "µs",
                f"{cpu[name] / cpu[FLOOR]:.2f}x the floor's CPU",
                vs=cpu_peer,
                goal=("<=", 0.5),
            )
        )
    rows.append(Row("client CPU: " + FLOOR_ASYNCIO, cpu[FLOOR_ASYNCIO], "µs", vs=cpu_floor))
    print_table(
        f"P5 streamed completions, {CONCURRENCY} concurrent loops, {CHUNKS} chunks each, mock "
        f"provider in its own process (median of {REPEATS} alternating {WINDOW:g} s windows)",
        rows,
        baseline=FLOOR,
        goal="requests/s >= 0.90x the hand-written floor; client CPU per request <= 0.5x the "
        "openai SDK's",
        higher_is_better=None,
    )


if __name__ == "__main__":
    run()
