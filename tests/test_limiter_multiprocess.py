"""P7 as a test: four processes share one key through Redis at twice its limit.

Each process (``tests/limiter_worker.py``) is a node with its own supervisor, offering 100
admissions per second with ``try_acquire`` for three seconds against a shared budget of
200/s (burst 40): 2x the limit in total. Approximate mode spends only leased escrow, so the
admitted total over the window must stay within ``burst + rate * window`` with no extra
allowance at all, and every node gets a share of a budget that keeps refilling. How much of
the budget gets used is a benchmark figure (P7 in bench/bench_limiter.py), not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import RedisServer

pytestmark = pytest.mark.trio

WORKER = Path(__file__).with_name("limiter_worker.py")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shared_rate_limit.py"
NODES = 4
RATE = 200.0  # per second (12 000 per minute)
BURST = 40


class Lines:
    """Line reader over a Trio receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError("the worker exited early")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


async def test_four_processes_at_twice_the_limit(redis_server: RedisServer) -> None:
    family = f"multiprocess-{time.time_ns()}"
    command = [
        sys.executable, str(WORKER),
        "--url", redis_server.url,
        "--family", family,
        "--duration", "3",
        "--offered", str(2 * RATE / NODES),
        "--rpm", str(int(RATE * 60)),
        "--burst", str(BURST),
        "--tpm", str(int(RATE * 60 * 100)),
        "--tokens-burst", str(BURST * 100),
        "--tokens", "100",
    ]  # fmt: skip
    procs: list[trio.Process] = []
    try:
        with trio.fail_after(45):
            for i in range(NODES):
                procs.append(
                    await trio.lowlevel.open_process(
                        [*command, "--node", f"proc-{i}"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            readers = []
            for proc in procs:
                assert proc.stdout is not None
                reader = Lines(proc.stdout)
                assert await reader.next() == "ready"
                readers.append(reader)
            start = f"{time.time() + 0.3!r}\n".encode()  # every node starts at once
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send_all(start)
            results = [json.loads(await reader.next()) for reader in readers]
            for proc in procs:
                assert await proc.wait() == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()

    admitted = sum(r["admitted"] for r in results)
    window = max(r["ended"] for r in results) - min(r["started"] for r in results)
    common = min(r["ended"] for r in results) - max(r["started"] for r in results)
    limit = BURST + RATE * window
    print(f"admitted {admitted} of {limit:.0f} ({admitted / limit:.1%}) over {window:.3f}s")
    assert admitted <= limit  # escrow: no over-spend at all
    # Shared as it refills, not just the first burst split up.
    assert admitted > BURST + RATE * common / 2
    assert all(r["admitted"] > 0 for r in results)  # every node got a share


async def test_the_shared_limit_example(redis_server: RedisServer) -> None:
    with trio.fail_after(45):
        proc = await trio.run_process(
            [sys.executable, str(EXAMPLE), redis_server.url, "--seconds", "1.5"],
            capture_stdout=True,
            check=False,
        )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert "node-a: admitted" in out and "node-b: admitted" in out
    assert "together:" in out
