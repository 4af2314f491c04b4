"""P8: what 300 control-plane viewers cost the application's requests.

A supervisor with 10 endpoints serves steady traffic: 8 concurrent loops of
``await ep.complete(request)`` (each loop cycling over the endpoints) against the loopback mock
provider, which runs in its own process. The supervisor serves the control plane
(``rk.serve_control(..., allow_viewers=True)``), and a separate process holds the viewers:
each connects, says ``hello`` without a valid token (so it is admitted read-only) and reads
every frame the server broadcasts (the ~1 Hz stats of every endpoint and any events) — their
CPU is not the application's, but the server's work for them is.

Request latency is measured in windows with 0 viewers and with 300 viewers connected,
alternating, after the viewers' connections have settled (connecting and disconnecting are
outside the windows). The table shows p50/p95/p99 over every request of each condition and
the ratio of each to the same percentile with no viewers. Goal: p99 with 300 viewers < 2x.
"""

from __future__ import annotations

import functools
import secrets
import subprocess
import sys
import time
from pathlib import Path

import trio
from _harness import LineReader, MockServerProcess, Row, percentile, print_table

import rakka_trio as rk

HERE = Path(__file__).resolve().parent
ENDPOINTS = 10
LOOPS = 8
VIEWERS = 300
WARMUP = 0.5
SETTLE = 0.5
WINDOW = 2.0
REPEATS = 3
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])


class Result:
    def __init__(self) -> None:
        self.latencies: dict[int, list[float]] = {0: [], VIEWERS: []}
        self.seconds: dict[int, float] = {0: 0.0, VIEWERS: 0.0}
        self.frames = 0
        self.connected: list[int] = []


async def scenario(base_url: str) -> Result:
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(name=f"ep-{i}", provider="openai", base_url=base_url, model="bench")
            for i in range(ENDPOINTS)
        ]
    )
    done: list[tuple[float, float]] = []  # (start, seconds) of every request
    result = Result()
    async with rk.open_supervisor(cfg) as sup, trio.open_nursery() as nursery:
        srv = await nursery.start(
            functools.partial(
                rk.serve_control,
                sup,
                "127.0.0.1",
                0,
                token=secrets.token_urlsafe(32),
                allow_viewers=True,
                max_connections=VIEWERS + 16,
                # Every viewer connects from 127.0.0.1 at once: lift the per-address limit on
                # sockets that have not said hello yet (a defence against squatting).
                max_unauthenticated_per_ip=VIEWERS + 16,
            )
        )

        async def loop(first: int) -> None:
            endpoints = [sup.endpoint(f"ep-{(first + k) % ENDPOINTS}") for k in range(ENDPOINTS)]
            while True:
                for ep in endpoints:
                    t0 = time.perf_counter()
                    await ep.complete(REQUEST)
                    done.append((t0, time.perf_counter() - t0))

        for i in range(LOOPS):
            nursery.start_soon(loop, i)
        viewers = await trio.lowlevel.open_process(
            [sys.executable, str(HERE / "_viewers.py"), srv.url, str(VIEWERS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert viewers.stdin is not None and viewers.stdout is not None
        replies = LineReader(viewers.stdout)

        async def command(text: str) -> str:
            assert viewers.stdin is not None
            await viewers.stdin.send_all(text.encode() + b"\n")
            reply = await replies.readline()
            if reply is None:
                raise RuntimeError("the viewer process ended early")
            return reply

        try:
            await trio.sleep(WARMUP)
            for r in range(REPEATS):
                for count in (0, VIEWERS) if r % 2 == 0 else (VIEWERS, 0):
                    if count:
                        await command("connect")
                    await trio.sleep(SETTLE)
                    if count:
                        result.connected.append(srv.statistics().viewers)
                    start = time.perf_counter()
                    await trio.sleep(WINDOW)
                    end = time.perf_counter()
                    result.seconds[count] += end - start
                    result.latencies[count] += [d for t, d in done if start <= t and t + d <= end]
                    if count:
                        result.frames += int((await command("disconnect")).split()[1])
        finally:
            await viewers.stdin.aclose()
            with trio.move_on_after(5):
                await viewers.wait()
            if viewers.returncode is None:
                viewers.kill()
            nursery.cancel_scope.cancel()
    return result


def run() -> None:
    """Print the P8 viewers table."""
    with MockServerProcess(chunks=16) as mock:
        result = trio.run(scenario, mock.url())
        mock.stop()
    quiet, busy = result.latencies[0], result.latencies[VIEWERS]
    label = {0: "0 viewers", VIEWERS: f"{VIEWERS} viewers"}
    rows = []
    for q in (50, 95, 99):
        for count, values in ((0, quiet), (VIEWERS, busy)):
            rows.append(
                Row(
                    f"p{q} latency, {label[count]}",
                    percentile(values, q) * 1e3,
                    "ms",
                    "floor" if count == 0 else "",
                    vs=f"p{q} latency, {label[0]}",
                    goal=("<", 2.0) if q == 99 and count else None,
                )
            )
    for count, values in ((0, quiet), (VIEWERS, busy)):
        rows.append(
            Row(
                f"requests/s, {label[count]}",
                len(values) / result.seconds[count],
                "r/s",
                f"{len(values):,} requests in {result.seconds[count]:.1f} s",
                vs=f"requests/s, {label[0]}",
            )
        )
    per_viewer = result.frames / max(1, VIEWERS * REPEATS)
    print_table(
        f"P8 control-plane viewers: {ENDPOINTS} endpoints, {LOOPS} loops of ep.complete, "
        f"{VIEWERS} viewers in another process ({REPEATS} alternating {WINDOW:g} s windows "
        f"each)",
        rows,
        baseline="p50 latency, 0 viewers",
        goal=f"p99 latency with {VIEWERS} viewers < 2x the p99 with none",
    )
    print(
        f"viewers connected during the windows: {result.connected}; "
        f"~{per_viewer:.1f} frames delivered to each viewer per connection"
    )


if __name__ == "__main__":
    run()
