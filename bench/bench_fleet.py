"""P11 — the fleet: 100 simulated nodes x 20 endpoints against one loopback redis-server.

Every simulated node is a real supervisor with 20 endpoints and its own fleet link (its own
Redis client and pub/sub connection), all in this one process and event loop; an observer
(``rk.open_fleet``, as an operator console would use) reads the fleet view once a second and
issues the fleet commands. Measured in the same run:

* Redis commands per node per second at steady state (``INFO commandstats``, everything Redis
  executed in a 10 s window, the observer's reads included) — goal <= 2;
* Redis CPU over that window (``INFO cpu`` deltas) — goal < 20 %;
* the fleet view: the time to read and aggregate it, and the time from a breaker change on
  one node to that change showing in the observer's view (Hystrix + Turbine: 1-2 s) — goal
  <= 2 s;
* a fleet force-open (or reset) applied on all nodes: per node, from the command's issue to
  the node's ack stamp (both Unix time in this process), p99 over every node and command —
  goal <= 1 s; and the slowest node of each command;
* the same as an operator's console sees it through a fleet server
  (``rk.serve_fleet_control`` and a fleet-scope ``rk.open_control_client``): the size of a
  fleet ``stats`` frame, a change on one node until a stats frame shows it, and a fleet
  force-open from the console until its ack (every node acked).

A redis-server is started on a free 127.0.0.1 port for the run and stopped after.
"""

from __future__ import annotations

import functools
import random
import shutil
import socket
import statistics
import subprocess
import time

import trio

import rakka_trio as rk

NODES = 100
ENDPOINTS = 20
WINDOW = 10.0  # seconds of steady state measured
COMMANDS = 20
CHANGES = 10
FLEET = "bench"
TOKEN = "bench-fleet-console-token"
CONSOLE_COMMANDS = 5


class RedisProcess:
    """A redis-server on a free port, with a raw-socket command helper for INFO."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxclients", "10000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        """One inline command; the whole reply (a bulk string is read to its end)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return data
                data += chunk
            head, _, body = data.partition(b"\r\n")
            if head.startswith(b"$") and int(head[1:]) >= 0:
                while len(body) < int(head[1:]) + 2:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                return body
            return data

    def info(self, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.command("INFO", section).decode().splitlines():
            if ":" in line and not line.startswith(("#", "$")):
                key, _, value = line.partition(":")
                out[key] = value
        return out

    def cpu_seconds(self) -> float:
        info = self.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def executed(self) -> int:
        total = 0
        for key, value in self.info("commandstats").items():
            if key.startswith("cmdstat_") and key not in ("cmdstat_info", "cmdstat_config"):
                total += int(value.split(",")[0].split("=")[1])
        return total

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _config(url: str, node: int) -> rk.SupervisorConfig:
    endpoints = [
        rk.EndpointConfig(
            name=f"ep{i:02d}",
            provider="openai",
            base_url="http://127.0.0.1:9/v1",
            credential=rk.StaticCredential("sk-bench-fleet-key"),
        )
        for i in range(ENDPOINTS)
    ]
    return rk.SupervisorConfig(
        redis_url=url,
        node_id=f"node-{node:03d}",
        redis_timeout=1.0,  # 100 nodes share this process's CPU with the observer
        fleet=rk.FleetConfig(name=FLEET),
        endpoints=endpoints,
    )


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


async def _measure(redis: RedisProcess) -> dict[str, float]:
    results: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        sups = [await nursery.start(rk.run_supervisor, _config(redis.url, i)) for i in range(NODES)]
        results["start"] = time.perf_counter() - started
        async with rk.open_fleet(
            redis.url, FLEET, observer_id="console", redis_timeout=2.0
        ) as fleet:
            while True:  # every node registered and published its endpoints
                view = await fleet.view()
                if len(view.nodes) == NODES and all(
                    len(n.endpoints) == ENDPOINTS for n in view.nodes.values()
                ):
                    break
                await trio.sleep(0.2)
            await trio.sleep(2.0)

            # Steady state, with the console refreshing its view once a second.
            redis.command("CONFIG", "RESETSTAT")
            cpu0, t0 = redis.cpu_seconds(), time.monotonic()
            reads: list[float] = []
            while time.monotonic() - t0 < WINDOW:
                r0 = time.perf_counter()
                view = await fleet.view()
                reads.append(time.perf_counter() - r0)
                assert view.fresh and len(view.nodes) == NODES
                await trio.sleep(max(0.0, 1.0 - (time.perf_counter() - r0)))
            elapsed = time.monotonic() - t0
            results["commands"] = redis.executed() / (NODES * elapsed)
            results["cpu"] = (redis.cpu_seconds() - cpu0) / elapsed * 100
            results["read_p50"] = statistics.median(reads)
            results["read_max"] = max(reads)

            # A change on one node, until the console's view shows it.
            rng = random.Random(11)
            changes: list[float] = []
            for _ in range(CHANGES):
                sup = rng.choice(sups)
                name = f"ep{rng.randrange(ENDPOINTS):02d}"
                changed = time.perf_counter()
                sup.force_open(name, 60.0, "bench", actor="bench")
                while True:
                    fig = (await fleet.view()).endpoints[name].per_node[sup.node_id]
                    if fig.state is rk.BreakerState.FORCED_OPEN:
                        break
                    await trio.sleep(0.05)
                changes.append(time.perf_counter() - changed)
                sup.reset(name)
            results["change_p50"] = statistics.median(changes)
            results["change_max"] = max(changes)

            # Fleet commands applied on every node.
            per_node: list[float] = []
            slowest: list[float] = []
            missing = 0
            for i in range(COMMANDS):
                name = f"ep{i % ENDPOINTS:02d}"
                result = await fleet.force_open(name, 60.0, "bench", actor="bench")
                delays = [at - result.issued_at for at in result.acks.values()]
                missing += len(result.nodes_missing) + NODES - len(result.acks)
                per_node.extend(delays)
                slowest.append(max(delays))
                await fleet.reset(name, "bench", actor="bench")
            results["apply_p50"] = statistics.median(per_node)
            results["apply_p99"] = _p(per_node, 0.99)
            results["apply_all_p99"] = _p(slowest, 0.99)
            results["missing"] = missing
            results.update(await _console(fleet, sups))
        nursery.cancel_scope.cancel()
    return results


async def _console(fleet: rk.Fleet, sups: list[rk.Supervisor]) -> dict[str, float]:
    """The fleet through a fleet server, as an operator's console sees it."""
    from rakka_trio._control import _protocol as proto

    results: dict[str, float] = {}
    async with trio.open_nursery() as serving:
        serve = functools.partial(rk.serve_fleet_control, fleet, "127.0.0.1", 0, token=TOKEN)
        srv = await serving.start(serve)
        async with rk.open_control_client(
            srv.url, token=TOKEN, client_name="bench", scope="fleet", command_timeout=30
        ) as console:

            async def shows(node: str, name: str, state: str) -> proto.StatsFrame:
                async for frame in console:
                    if isinstance(frame, proto.StatsFrame) and frame.fleet is not None:
                        ep = next(e for e in frame.fleet.endpoints if e.name == name)
                        if any(f.node == node and f.state == state for f in ep.per_node):
                            return frame
                raise RuntimeError("the console's connection ended")

            rng = random.Random(12)
            changes: list[float] = []
            frame: proto.StatsFrame | None = None
            for _ in range(CHANGES):
                sup = rng.choice(sups)
                name = f"ep{rng.randrange(ENDPOINTS):02d}"
                changed = time.perf_counter()
                sup.force_open(name, 60.0, "bench", actor="bench")
                frame = await shows(sup.node_id, name, "forced_open")
                changes.append(time.perf_counter() - changed)
                sup.reset(name)
            assert frame is not None
            results["frame_kib"] = len(proto.encode(frame)) / 1024
            results["console_change_p50"] = statistics.median(changes)
            results["console_change_max"] = max(changes)
            acked: list[float] = []
            missing = 0
            for i in range(CONSOLE_COMMANDS):
                name = f"ep{i:02d}"
                sent = time.perf_counter()
                ack = await console.force_open(name, 60.0, "bench", scope="fleet")
                acked.append(time.perf_counter() - sent)
                missing += len(ack.nodes_missing or ()) + NODES - len(ack.nodes_acked or ())
                await console.reset(name, "bench", scope="fleet")
            results["console_ack_p50"] = statistics.median(acked)
            results["console_ack_max"] = max(acked)
            results["console_missing"] = missing
        serving.cancel_scope.cancel()
    return results


def run() -> None:
    """Run P11 and print its table."""
    redis = RedisProcess()
    try:
        r = trio.run(_measure, redis)
    finally:
        redis.stop()
    rows = [
        ("start 100 nodes x 20 endpoints", r["start"], "s", "", True),
        ("Redis commands per node per second", r["commands"], "", "<= 2", r["commands"] <= 2),
        ("Redis CPU (steady, console at 1 Hz)", r["cpu"], "%", "< 20 %", r["cpu"] < 20),
        ("fleet view read + aggregate, p50", r["read_p50"] * 1e3, "ms", "", True),
        ("fleet view read + aggregate, max", r["read_max"] * 1e3, "ms", "", True),
        ("change on a node -> in view, p50", r["change_p50"], "s", "", True),
        ("change on a node -> in view, max", r["change_max"], "s", "<= 2 s", r["change_max"] <= 2),
        ("force-open applied per node, p50", r["apply_p50"] * 1e3, "ms", "", True),
        ("force-open applied per node, p99", r["apply_p99"] * 1e3, "ms", "<= 1000 ms",
         r["apply_p99"] <= 1.0),
        ("force-open applied on all nodes, p99", r["apply_all_p99"] * 1e3, "ms", "<= 1000 ms",
         r["apply_all_p99"] <= 1.0),
        ("nodes missing an ack (all commands)", r["missing"], "", "0", r["missing"] == 0),
        ("console (fleet-serve): stats frame size", r["frame_kib"], "KiB", "", True),
        ("console: change on a node -> shown, p50", r["console_change_p50"], "s", "", True),
        ("console: change on a node -> shown, max", r["console_change_max"], "s", "", True),
        ("console: fleet force-open -> ack, p50", r["console_ack_p50"] * 1e3, "ms", "", True),
        ("console: fleet force-open -> ack, max", r["console_ack_max"] * 1e3, "ms", "", True),
        ("console: nodes missing an ack", r["console_missing"], "", "0",
         r["console_missing"] == 0),
    ]  # fmt: skip
    print(f"\nP11 fleet: {NODES} simulated nodes x {ENDPOINTS} endpoints, one loopback Redis")
    print("anchor: Hystrix + Turbine refresh one dashboard over 476 servers in 1-2 s")
    width = max(len(row[0]) for row in rows) + 2
    print(f"{'what':<{width}}{'value':>12}  {'goal':<12}ok")
    print("-" * (width + 30))
    for what, value, unit, goal, ok in rows:
        mark = ("yes" if ok else "NO") if goal else ""
        print(f"{what:<{width}}{value:>9.2f} {unit:<3} {goal:<12}{mark}")


if __name__ == "__main__":
    run()
