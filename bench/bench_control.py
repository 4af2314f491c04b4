"""Control-plane viewers vs the application's request latency (the stats broadcast).

A supervisor with 10 endpoints serves 8 request loops through the loopback mock provider (in
its own process) while its control server streams ~1 Hz stats to 0, then 300 viewers. The
viewers live in a separate process (this file run with ``--viewers``), so only the server's
side of the broadcast is charged to the application. Phases alternate so drift on a shared
machine hits both alike. Goal: 300 viewers raise the application's request p99 by < 2x.

Run alone: ``uv run python bench/bench_control.py``.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

import rakka_trio as rk

HERE = Path(__file__).resolve().parent
ENDPOINTS = 10
LOOPS = 8
VIEWERS = 300
PHASE = 4.0  # seconds of requests per measured phase
REPEATS = 2  # (0 viewers, 300 viewers) pairs
STATS_INTERVAL = 1.0
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])


def _config(base_url: str) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=f"ep-{i:02d}", provider="openai", base_url=base_url, model="bench"
            )
            for i in range(ENDPOINTS)
        ],
        stats_interval=STATS_INTERVAL,
    )


async def _request_loops(
    sup: rk.Supervisor, duration: float, lags: list[float] | None = None
) -> list[float]:
    """Request latencies (seconds) of ``LOOPS`` loops streaming for ``duration`` seconds;
    ``lags`` collects how late a 2 ms ticker wakes meanwhile (event-loop stalls)."""
    latencies: list[float] = []
    names = sup.endpoint_names

    async def ticker(deadline: float) -> None:
        assert lags is not None
        while trio.current_time() < deadline:
            due = time.perf_counter() + 0.002
            await trio.sleep(0.002)
            lags.append(time.perf_counter() - due)

    async def loop(index: int, deadline: float) -> None:
        n = index
        while trio.current_time() < deadline:
            endpoint = sup.endpoint(names[n % len(names)])
            n += LOOPS
            start = time.perf_counter()
            async with endpoint.stream(REQUEST) as chunks:
                async for _ in chunks:
                    pass
            latencies.append(time.perf_counter() - start)

    deadline = trio.current_time() + duration
    async with trio.open_nursery() as nursery:
        for i in range(LOOPS):
            nursery.start_soon(loop, i, deadline)
        if lags is not None:
            nursery.start_soon(ticker, deadline)
    return latencies


def _start_viewers(url: str) -> subprocess.Popen[str]:
    viewers = subprocess.Popen(
        [sys.executable, __file__, "--viewers", url, str(VIEWERS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert viewers.stdout is not None
    line = viewers.stdout.readline().strip()  # blocks until every viewer has its welcome
    if line != "ready":
        viewers.kill()
        raise RuntimeError(f"the viewer process failed to connect: {line!r}")
    return viewers


def _stop(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


async def _measure(
    base_url: str,
) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[int, float]]:
    """Per viewer count: request latencies, event-loop lags, app CPU seconds per request."""
    results: dict[int, list[float]] = {0: [], VIEWERS: []}
    lags: dict[int, list[float]] = {0: [], VIEWERS: []}
    cpu: dict[int, float] = {0: 0.0, VIEWERS: 0.0}
    async with rk.open_supervisor(_config(base_url)) as sup, trio.open_nursery() as nursery:
        srv = await nursery.start(
            functools.partial(
                rk.serve_control,
                sup,
                token=None,
                allow_viewers=True,
                max_connections=VIEWERS + 10,
                max_unauthenticated_per_ip=VIEWERS + 10,
            )
        )
        await _request_loops(sup, 1.0)  # warm-up: connections to the mock, caches
        for _ in range(REPEATS):
            started = time.process_time()
            results[0] += await _request_loops(sup, PHASE, lags[0])
            cpu[0] += time.process_time() - started
            viewers = await trio.to_thread.run_sync(_start_viewers, srv.url)
            try:
                await trio.sleep(STATS_INTERVAL)  # the connection burst is not what we measure
                started = time.process_time()
                results[VIEWERS] += await _request_loops(sup, PHASE, lags[VIEWERS])
                cpu[VIEWERS] += time.process_time() - started
                assert srv.statistics().viewers == VIEWERS, srv.statistics()
            finally:
                await trio.to_thread.run_sync(_stop, viewers)
            while srv.statistics().active_connections:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return results, lags, {n: cpu[n] / max(1, len(results[n])) for n in cpu}


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[94] * 1e3, cuts[98] * 1e3


def run() -> None:
    """Print request latency percentiles with 0 and with 300 viewers, and the p99 ratio."""
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_mock_server.py"), "8"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        results, lags, cpu = trio.run(_measure, f"http://127.0.0.1:{port}/v1")
    finally:
        _stop(server)
    print(
        f"\nControl plane: app request latency with 0 vs {VIEWERS} viewers "
        f"({ENDPOINTS} endpoints, {LOOPS} request loops, stats every {STATS_INTERVAL:g} s, "
        f"viewers in their own process, {REPEATS} x {PHASE:g} s alternating)"
    )
    print(f"goal: {VIEWERS} viewers raise the app's p99 by < 2x")
    head = f"{'viewers':<10}{'requests':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"
    print(f"{head}{'loop lag p99 ms':>17}{'app CPU us/req':>16}")
    print("-" * 83)
    p99s = {}
    for count, samples in results.items():
        p50, p95, p99 = _percentiles(samples)
        p99s[count] = p99
        line = f"{count:<10}{len(samples):>10}{p50:>10.2f}{p95:>10.2f}{p99:>10.2f}"
        lag = _percentiles(lags[count])[2]
        print(f"{line}{lag:>17.2f}{cpu[count] * 1e6:>16.0f}")
    print(f"p99 ratio ({VIEWERS} / 0 viewers): {p99s[VIEWERS] / p99s[0]:.2f}x")


# --- the viewer process ---------------------------------------------------------------------


async def _viewers(url: str, count: int) -> None:
    import trio_websocket

    connected = 0
    all_in = trio.Event()

    async def viewer() -> None:
        nonlocal connected
        async with trio_websocket.open_websocket_url(url, max_message_size=2**24) as ws:
            await ws.send_message('{"type":"hello","client":"bench-viewer"}')
            await ws.get_message()  # the welcome
            connected += 1
            if connected == count:
                all_in.set()
            while True:
                await ws.get_message()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(viewer)
        with trio.fail_after(60):
            await all_in.wait()
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):  # until the benchmark closes our stdin
            pass
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--viewers":
        trio.run(_viewers, sys.argv[2], int(sys.argv[3]))
    else:
        run()
