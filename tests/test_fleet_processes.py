"""The fleet's acceptance tests: three node processes (``tests/fleet_worker.py``) and one
real redis-server; this test process commands them as an observer (``rk.open_fleet``).

* a fleet force-open reaches all three within a second (acks and the nodes' own transitions);
* reset clears it on all three;
* a node killed and restarted comes back forced open before its first request;
* a frozen node (SIGSTOP) is listed in ``nodes_missing``, and applies the command on thaw;
* through ``rakka-trio fleet-serve``: a fleet-scope hello gets every node, fleet commands from
  the control plane and from the CLI reach them all (the CLI prints each node's ack), a frozen
  node makes the CLI exit 6, and with Redis stalled the view says so while requests go on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import rakka_trio as rk
from tests.conftest import RedisServer
from tests.control_helpers import peer

pytestmark = pytest.mark.trio

WORKER = Path(__file__).with_name("fleet_worker.py")
APPLY_BOUND = 1.0  # seconds: every node applies a fleet command within this


class Node:
    """One worker process and the JSON lines it prints."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self._buffer = b""

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some()
            if not data:
                raise EOFError(f"{self.name} exited early")
            self._buffer += data
        raw, self._buffer = self._buffer.split(b"\n", 1)
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    async def transition(self, endpoint: str, to: str) -> dict[str, Any]:
        """The next transition of ``endpoint`` to ``to`` (skipping others)."""
        while True:
            event = await self.line()
            if event["event"] == "transition" and (event["endpoint"], event["to"]) == (
                endpoint,
                to,
            ):
                return event

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def start_node(url: str, fleet: str, name: str) -> Node:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WORKER), "--url", url, "--fleet", fleet, "--node", name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return Node(name, process)


@asynccontextmanager
async def three_nodes(url: str, fleet: str) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for i in range(3):
            nodes.append(await start_node(url, fleet, f"node-{i}"))
        yield nodes
    finally:
        for node in nodes:
            node.kill()
        with trio.move_on_after(10):
            for node in nodes:
                await node.process.wait()


async def wait_ready(nodes: list[Node]) -> list[dict[str, Any]]:
    return [await node.line() for node in nodes]


async def wait_registered(fleet: rk.Fleet, names: set[str]) -> None:
    while not names <= set((await fleet.view()).nodes):  # noqa: ASYNC110 (polls Redis)
        await trio.sleep(0.05)


async def test_force_open_reaches_all_three_within_a_second_and_reset_clears_all(
    redis_server: RedisServer,
) -> None:
    name = f"acceptance-{time.time_ns()}"
    with trio.fail_after(40):
        async with (
            three_nodes(redis_server.url, name) as nodes,
            rk.open_fleet(redis_server.url, name, observer_id="console") as fleet,
        ):
            for ready in await wait_ready(nodes):
                assert ready["first_request"] == "ok"
                assert ready["states"]["primary"] == "closed"
            await wait_registered(fleet, {n.name for n in nodes})

            result = await fleet.force_open(
                "primary", 300.0, "incident-42", actor="alice", ack_timeout=2.0
            )
            assert result.nodes_acked == ("node-0", "node-1", "node-2")
            assert result.nodes_missing == ()
            assert result.complete
            delays = {n: round(at - result.issued_at, 4) for n, at in result.acks.items()}
            print(f"applied after (s): {delays}")
            for node in nodes:
                assert result.acks[node.name] - result.issued_at <= APPLY_BOUND
                seen = await node.transition("primary", "forced_open")
                assert seen["wall"] - result.issued_at <= APPLY_BOUND
                assert seen["actor"] == "fleet:alice"

            await trio.sleep(1.0)  # one publication of every node
            view = await fleet.view()
            primary = view.endpoints["primary"]
            assert primary.summary == "open on 3/3"
            assert primary.override is not None and primary.override.reason == "incident-42"
            assert set(primary.per_node) == {"node-0", "node-1", "node-2"}
            assert view.endpoints["backup"].summary == "closed on 3/3"

            cleared = await fleet.reset("primary", "resolved", actor="alice")
            assert cleared.nodes_acked == ("node-0", "node-1", "node-2")
            assert cleared.nodes_missing == ()
            for node in nodes:
                await node.transition("primary", "closed")
            assert "primary" not in (await fleet.view()).overrides

            audit = [e for e in await fleet.recent_events(50) if e.kind == "command"]
            assert [(e.fields["command"], e.fields["actor"]) for e in audit] == [
                ("force_open", "alice"),
                ("reset", "alice"),
            ]
            assert audit[0].fields["reason"] == "incident-42"
            assert audit[0].fields["origin"] == "console"


async def test_a_node_killed_and_restarted_comes_back_forced_open_before_serving(
    redis_server: RedisServer,
) -> None:
    name = f"restart-{time.time_ns()}"
    with trio.fail_after(40):
        async with (
            three_nodes(redis_server.url, name) as nodes,
            rk.open_fleet(redis_server.url, name) as fleet,
        ):
            await wait_ready(nodes)
            await wait_registered(fleet, {n.name for n in nodes})
            result = await fleet.force_open("primary", 300.0, "incident", actor="bob")
            assert result.complete

            nodes[1].kill()
            await nodes[1].process.wait()
            nodes[1] = await start_node(redis_server.url, name, "node-1")
            ready = await nodes[1].line()
            # The first request met the forced breaker: it never reached the provider.
            assert ready["first_request"] == "CircuitOpen"
            assert ready["states"]["primary"] == "forced_open"
            assert ready["states"]["backup"] == "closed"
            assert ready["provider_requests"] == 0

            await wait_registered(fleet, {"node-1"})
            cleared = await fleet.reset("primary", "over", actor="bob")
            assert cleared.nodes_acked == ("node-0", "node-1", "node-2")
            await nodes[1].transition("primary", "closed")


async def test_a_frozen_node_is_listed_missing_and_applies_the_command_on_thaw(
    redis_server: RedisServer,
) -> None:
    name = f"frozen-{time.time_ns()}"
    with trio.fail_after(40):
        async with (
            three_nodes(redis_server.url, name) as nodes,
            rk.open_fleet(redis_server.url, name) as fleet,
        ):
            await wait_ready(nodes)
            await wait_registered(fleet, {n.name for n in nodes})
            nodes[2].process.send_signal(signal.SIGSTOP)
            try:
                result = await fleet.force_open("primary", 300.0, "incident", ack_timeout=2.0)
                assert result.nodes_acked == ("node-0", "node-1")
                assert result.nodes_missing == ("node-2",)
                assert not result.complete
            finally:
                nodes[2].process.send_signal(signal.SIGCONT)
            # The broadcast waited in the frozen node's socket; the stored override is there
            # too. Either way it holds once the node runs again.
            await nodes[2].transition("primary", "forced_open")


# --- the control plane and the CLI against node processes (fleet-serve) ----------------------

CLI = [sys.executable, "-m", "rakka_trio._cli"]
FLEET_TOKEN = "fleet-operator-token-5b1e9d27"
_URL = re.compile(rb"on (ws://127\.0\.0\.1:\d+)")


@asynccontextmanager
async def fleet_serve(url: str, fleet: str, tmp_path: Path) -> AsyncIterator[str]:
    """``rakka-trio fleet-serve`` in a process of its own; its control URL."""
    token_file = tmp_path / "token"
    token_file.write_text(FLEET_TOKEN + "\n")
    with open(tmp_path / "fleet-serve.err", "wb") as errors:  # noqa: ASYNC230 (a local file)
        process = await trio.lowlevel.open_process(
            [*CLI, "fleet-serve", "--redis", url, "--fleet", fleet, "--port", "0",
             "--token-file", str(token_file)],
            stdout=subprocess.PIPE,
            stderr=errors,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = b""
        while (found := _URL.search(printed)) is None:
            data = await process.stdout.receive_some()
            assert data, f"fleet-serve exited: {(tmp_path / 'fleet-serve.err').read_text()}"
            printed += data
        yield found.group(1).decode()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """One ``rakka-trio`` command (the operator token in the environment)."""
    return await trio.run_process(
        [*CLI, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "RAKKA_TOKEN": FLEET_TOKEN},
    )


async def node_request(node: Node) -> dict[str, Any]:
    """Have ``node`` send one request through its deployment; what it met."""
    assert node.process.stdin is not None
    await node.process.stdin.send_all(b"request\n")
    while True:
        event = await node.line()
        if event["event"] == "request":
            return event


async def test_fleet_serve_shows_every_node_and_fleet_commands_reach_them_all(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"serve-{time.time_ns()}"
    with trio.fail_after(50):
        async with (
            three_nodes(redis_server.url, name) as nodes,
            rk.open_fleet(redis_server.url, name) as fleet,
            fleet_serve(redis_server.url, name, tmp_path) as url,
        ):
            await wait_ready(nodes)
            await wait_registered(fleet, {n.name for n in nodes})
            # The control plane: a fleet-scope hello gets every node; a fleet command, all.
            async with peer(url) as p:
                await p.send({"type": "hello", "token": FLEET_TOKEN, "scope": "fleet"})
                welcome = await p.recv()
                assert welcome["scope"] == "fleet" and welcome["role"] == "operator"
                names = [n["node_id"] for n in welcome["fleet"]["nodes"]]
                assert names == ["node-0", "node-1", "node-2"]
                primary = next(e for e in welcome["fleet"]["endpoints"] if e["name"] == "primary")
                assert primary["summary"] == "closed on 3/3"
                sent = time.time()
                await p.send(
                    {"type": "force_open", "id": 1, "endpoint": "primary", "duration": 300,
                     "reason": "ws-drill", "scope": "fleet"}
                )  # fmt: skip
                ack = await p.recv_type("ack")
                assert ack["nodes_acked"] == names and ack["nodes_missing"] == []
                for node in nodes:
                    seen = await node.transition("primary", "forced_open")
                    assert seen["wall"] - sent <= APPLY_BOUND
            # The CLI: reset, then force-open, each printing every node's ack.
            done = await cli("reset", url, "primary", "--fleet", "--reason", "over")
            assert done.returncode == 0, done.stderr
            lines = done.stdout.decode().splitlines()
            assert lines[0] == "primary: fleet reset (reason: over): 3 of 3 nodes acked"
            assert [line.split()[:2] for line in lines[1:]] == [
                ["node-0", "acked"], ["node-1", "acked"], ["node-2", "acked"]
            ]  # fmt: skip
            for node in nodes:
                await node.transition("primary", "closed")
            sent = time.time()
            done = await cli(
                "force-open", url, "primary", "--fleet", "--duration", "5m", "--reason", "drill"
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().startswith(
                "primary: fleet force_open for 300s (reason: drill): 3 of 3 nodes acked\n"
            )
            for node in nodes:
                seen = await node.transition("primary", "forced_open")
                assert seen["wall"] - sent <= APPLY_BOUND + 2  # the CLI's own start-up counts
                assert seen["actor"].startswith("fleet:cli:")
            # The fleet table: state counts, and each node's state.
            state = await cli("state", url, "--fleet")
            while "open on 3/3" not in state.stdout.decode():  # polls the nodes via Redis
                await trio.sleep(0.2)
                state = await cli("state", url, "--fleet")
            table = state.stdout.decode()
            assert "fleet " + name in table and "(link up)" in table
            assert re.search(r"node-2\s+closed\s+forced_open", table), table
            as_json = json.loads((await cli("state", url, "--fleet", "--json")).stdout)
            assert as_json["type"] == "ack" and as_json["scope"] == "fleet"
            assert {n["node_id"] for n in as_json["fleet"]["nodes"]} == set(names)


async def test_a_frozen_node_makes_the_cli_exit_6_listing_it_missing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"exit6-{time.time_ns()}"
    with trio.fail_after(50):
        async with (
            three_nodes(redis_server.url, name) as nodes,
            rk.open_fleet(redis_server.url, name) as fleet,
            fleet_serve(redis_server.url, name, tmp_path) as url,
        ):
            await wait_ready(nodes)
            await wait_registered(fleet, {n.name for n in nodes})
            nodes[2].process.send_signal(signal.SIGSTOP)
            try:
                done = await cli("force-open", url, "primary", "--fleet", "--duration", "60")
            finally:
                nodes[2].process.send_signal(signal.SIGCONT)
            assert done.returncode == 6, done.stderr
            out = done.stdout.decode()
            assert out.startswith("primary: fleet force_open for 60s: 2 of 3 nodes acked\n")
            assert "  node-0  acked" in out and "  node-1  acked" in out
            assert "  node-2  MISSING: no ack in time" in out
            assert b"1 node did not ack: node-2" in done.stderr
            # The stored override reaches it once it runs again.
            await nodes[2].transition("primary", "forced_open")


async def test_redis_down_the_fleet_view_says_link_down_and_requests_never_wait(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    name = f"down-{time.time_ns()}"
    with trio.fail_after(50):
        async with (
            three_nodes(private_redis.url, name) as nodes,
            rk.open_fleet(private_redis.url, name) as fleet,
            fleet_serve(private_redis.url, name, tmp_path) as url,
        ):
            await wait_ready(nodes)
            await wait_registered(fleet, {n.name for n in nodes})
            assert private_redis.process is not None
            private_redis.process.send_signal(signal.SIGSTOP)  # stalled: the worst case
            try:
                state = await cli("state", url, "--fleet")
                assert state.returncode == 0, state.stderr
                title = state.stdout.decode().splitlines()[0]
                assert "(link fleet link down since " in title and "last view read" in title
                # Every node still serves while Redis is stalled: a request never waits on
                # the fleet link (it completes before Redis comes back).
                for node in nodes:
                    assert (await node_request(node))["result"] == "ok"
                refused = await cli("force-open", url, "primary", "--fleet", "--duration", "60")
                assert refused.returncode == 1 and b"fleet_unavailable" in refused.stderr
            finally:
                private_redis.process.send_signal(signal.SIGCONT)
            while "(link up)" not in (await cli("state", url, "--fleet")).stdout.decode():  # noqa: ASYNC110
                await trio.sleep(0.2)
