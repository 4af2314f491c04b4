"""Chaos: a real redis-server frozen (SIGSTOP) for five seconds under multi-process load.

Three node processes (``tests/limiter_worker.py``) share one key at three times its limit.
Five seconds into the run Redis is stopped — not killed: the calls in flight time out on the
nodes, which fall back to their share, but Redis still holds them and runs them when it is
continued. Those calls must not be applied twice (a timed-out lease re-sent with the same
charges used to leave the fleet several bursts in debt and admitting nothing for seconds). The
test asserts the documented bounds (docs/rate-limiting.md, "Redis stalls"):

- the shared bucket never owes more than one burst per node after the thaw;
- admissions resume within 2 s of the thaw: from then on, every half second admits;
- the fleet's total stays within ``burst + rate * run`` plus what the fallback may admit
  during the stall beyond the one burst per node it is charged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tests.conftest import RedisServer
from tests.test_limiter_multiprocess import Lines

pytestmark = pytest.mark.trio

WORKER = Path(__file__).resolve().parent.parent / "limiter_worker.py"
NODES = 3
RATE = 100.0  # per second, for the fleet
BURST = 50
OFFERED = 100.0  # per second and node: three times the limit in all
RUN = 12.0
FREEZE_AT = 4.0
STALL = 5.0


def read_levels(port: int, pattern: str, until: float) -> list[float]:
    """Poll the shared request bucket's stored level (``l1`` of the state hash) until
    ``until`` (monotonic); a blocking helper for a worker thread."""
    levels: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as conn:
        reader = conn.makefile("rb")

        def command(*args: str) -> bytes:
            parts = [f"*{len(args)}\r\n".encode()]
            for a in args:
                parts.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
            conn.sendall(b"".join(parts))
            return read_reply()

        def read_reply() -> bytes:
            line = reader.readline()
            if line[:1] == b"$":
                size = int(line[1:])
                if size < 0:
                    return b""
                data = reader.read(size + 2)
                return data[:-2]
            if line[:1] == b"*":
                items = [read_reply() for _ in range(int(line[1:]))]
                return b"\n".join(items)
            return line.strip()

        state = b""
        while not state and time.monotonic() < until:
            state = command("KEYS", pattern).split(b"\n")[0]
        while time.monotonic() < until:
            raw = command("HGET", state.decode(), "l1")
            if raw:
                levels.append(float(raw))
            time.sleep(0.02)
    return levels


@pytest.mark.parametrize("mode", ["approximate", "strict"])
async def test_a_redis_stall_costs_at_most_the_documented_debt(
    private_redis: RedisServer, mode: str
) -> None:
    family = f"stall-{mode}-{time.time_ns()}"
    command = [
        sys.executable, str(WORKER),
        "--url", private_redis.url,
        "--family", family,
        "--mode", mode,
        "--duration", str(RUN),
        "--offered", str(OFFERED),
        "--rpm", str(int(RATE * 60)),
        "--burst", str(BURST),
        "--tpm", str(int(RATE * 60 * 1000)),
        "--tokens-burst", str(BURST * 1000),
        "--tokens", "1",
        "--sync-interval", "0.2",
        "--redis-timeout", "0.25",
        "--timeline",
    ]  # fmt: skip
    assert private_redis.process is not None
    pid = private_redis.process.pid
    procs: list[trio.Process] = []
    frozen = False
    try:
        with trio.fail_after(60):
            for i in range(NODES):
                procs.append(
                    await trio.lowlevel.open_process(
                        [*command, "--node", f"stall-{i}"],
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
            start = time.time() + 0.5
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send_all(f"{start!r}\n".encode())
            await trio.sleep(start + FREEZE_AT - time.time())
            os.kill(pid, signal.SIGSTOP)
            frozen = True
            freeze = time.time()
            await trio.sleep(STALL)
            os.kill(pid, signal.SIGCONT)
            frozen = False
            thaw = time.time()
            levels = await trio.to_thread.run_sync(
                read_levels,
                private_redis.port,
                f"rakka:rl:*{family}*:s",
                time.monotonic() + (start + RUN - time.time()) - 0.5,
            )
            results = [json.loads(await reader.next()) for reader in readers]
            for proc in procs:
                assert await proc.wait() == 0
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
        for proc in procs:
            if proc.returncode is None:
                proc.kill()

    times = sorted(t for r in results for t in r["timeline"])
    began = min(r["started"] for r in results)
    ended = max(r["ended"] for r in results)
    print(
        f"{mode}: admitted {len(times)} over {ended - began:.2f}s; stall {thaw - freeze:.2f}s; "
        f"lowest shared level after the thaw {min(levels):.1f}"
    )

    # Debt: what the nodes admitted under their fallback share is charged once, at most one
    # burst per node; a call that timed out but ran anyway is never applied a second time.
    assert levels, "the shared state was never read after the thaw"
    assert min(levels) >= -NODES * BURST - NODES

    # Recovery: every half second from 2 s after the thaw to the end of the run admits.
    windows = []
    t = thaw + 2.0
    while t + 0.5 <= ended - 0.2:
        windows.append(sum(1 for u in times if t <= u < t + 0.5))
        t += 0.5
    assert windows and all(w > 0 for w in windows), windows

    # Total: the shared budget, plus what the fallback may admit in the stall beyond the one
    # burst per node it is charged (each node: its share of the rate, from empty).
    fallback = RATE * (thaw - freeze + 1.0)
    bound = BURST + RATE * (ended - began) + max(0.0, fallback - NODES * BURST) + NODES
    assert len(times) <= bound
