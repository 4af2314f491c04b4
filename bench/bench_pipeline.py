"""P5: full pipeline throughput vs a bare httpx streaming loop.

The loopback mock provider runs in a separate process (so its cost is not shared with the
client being measured). The same number of concurrent request loops stream OpenAI-style
completions either with bare ``httpx`` (read every byte, nothing else) or through
``Endpoint.stream`` (breaker, session, retry bookkeeping, SSE decoding, the provider adapter
and typed chunks). Goal: the pipeline keeps >= 85 % of bare throughput.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
from _harness import Row, print_table, rate_and_cpu

import rakka_trio as rk
from rakka_trio._request import ChatRequest

CONCURRENCY = 16
DURATION = 3.0
REPEATS = 3
HERE = Path(__file__).resolve().parent
BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": "hello"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def bare_loop(base_url: str) -> tuple[float, float]:
    """(completed streams per second, client CPU microseconds per stream) with bare httpx."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one() -> None:
            async with client.stream("POST", "/chat/completions", json=BODY) as response:
                response.raise_for_status()
                async for _ in response.aiter_bytes():
                    pass

        return await rate_and_cpu(one, concurrency=CONCURRENCY, duration=DURATION)


async def pipeline_loop(base_url: str) -> tuple[float, float]:
    """(completed streams per second, client CPU microseconds per stream) through
    Endpoint.stream."""
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(name="bench", provider="openai", base_url=base_url, model="bench")
        ]
    )
    request = ChatRequest(messages=[{"role": "user", "content": "hello"}])
    async with rk.open_supervisor(cfg) as sup:
        ep = sup.endpoint("bench")

        async def one() -> None:
            async with ep.stream(request) as chunks:
                async for _ in chunks:
                    pass

        return await rate_and_cpu(one, concurrency=CONCURRENCY, duration=DURATION)


def run() -> None:
    """Print the P5 table."""
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_mock_server.py"), "16"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base_url = f"http://127.0.0.1:{port}/v1"
        bare: list[tuple[float, float]] = []
        piped: list[tuple[float, float]] = []
        for _ in range(REPEATS):  # interleaved so drift on a shared machine hits both alike
            bare.append(trio.run(bare_loop, base_url))
            piped.append(trio.run(pipeline_loop, base_url))
            time.sleep(0.2)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)
    (bare_rate, bare_cpu), (piped_rate, piped_cpu) = max(bare), max(piped)
    rows = [
        Row("bare httpx stream loop", bare_rate, "r/s", f"floor; client CPU {bare_cpu:.0f} us/req"),
        Row(
            "rakka-trio Endpoint.stream",
            piped_rate,
            "r/s",
            f"client CPU {piped_cpu:.0f} us/req ({piped_cpu / bare_cpu:.2f}x bare)",
        ),
    ]
    print_table(
        f"P5 streamed completions per second, {CONCURRENCY} concurrent loops, 16 chunks each, "
        f"mock provider in its own process (best of {REPEATS} x {DURATION:g} s)",
        rows,
        baseline="bare httpx stream loop",
        goal="rakka-trio >= 85% of bare httpx throughput",
        higher_is_better=True,
    )


if __name__ == "__main__":
    run()
