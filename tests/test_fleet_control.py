"""The control plane's fleet scope, against a real redis-server and real control servers.

Three nodes (supervisors in this process, each with its own fleet link and Redis connections)
and a control server on one of them, or a fleet server (``serve_fleet_control``) with no
endpoints. Raw websocket peers check the frames themselves; node scope must stay exactly v1.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio import _cli
from tests.conftest import RedisServer
from tests.control_helpers import TOKEN, Peer, operator, peer
from tests.test_fleet_redis import fleet_name, node_config, nodes, registered

pytestmark = pytest.mark.trio

NODES = ("n0", "n1", "n2")

# The frames' keys in protocol v1, before the fleet: node scope must not gain any.
# The welcome of protocol v1, plus the incident view's additive "history" (the last
# transitions and commands): nothing of the fleet scope.
V1_WELCOME = {"type", "protocol", "role", "server", "stats_interval", "snapshot", "history"}
V1_ACK = {"type", "id", "command", "endpoint", "state", "snapshot"}
V1_TRANSITION = {
    "type", "wall", "endpoint", "from", "to", "cause", "consecutive_failures", "failure_rate",
    "calls_in_window", "trips", "open_until_in", "open_until_wall", "until_reset", "actor",
    "reason",
}  # fmt: skip


@asynccontextmanager
async def fleet_with_console(
    url: str, **server_kw: Any
) -> AsyncIterator[tuple[list[rk.Supervisor], rk.ControlServer]]:
    """Three registered nodes; n0 serves the control plane."""
    name = fleet_name()
    configs = [node_config(url, name, node, ["a", "b"]) for node in NODES]
    server_kw.setdefault("token", TOKEN)
    async with nodes(configs) as sups, trio.open_nursery() as nursery:
        await registered(sups[0].fleet, 3)
        srv = await nursery.start(
            functools.partial(rk.serve_control, sups[0], "127.0.0.1", 0, **server_kw)
        )
        yield sups, srv
        nursery.cancel_scope.cancel()


async def fleet_hello(p: Peer, token: str | None = TOKEN) -> dict[str, Any]:
    await p.send({"type": "hello", "token": token, "client": "console", "scope": "fleet"})
    return await p.recv()


def endpoint(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in snapshot["endpoints"] if e["name"] == name)
    return found


async def test_a_fleet_hello_gets_every_node_in_the_welcome_and_the_stats(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with fleet_with_console(redis_server.url) as (sups, srv), peer(srv.url) as p:
            welcome = await fleet_hello(p)
            assert welcome["type"] == "welcome" and welcome["scope"] == "fleet"
            assert welcome["role"] == "operator" and welcome["snapshot"]["endpoints"] == []
            fleet = welcome["fleet"]
            assert fleet["fleet"] == sups[0].fleet.name and fleet["link_status"] == "up"
            assert [n["node_id"] for n in fleet["nodes"]] == list(NODES)
            a = endpoint(fleet, "a")
            assert a["summary"] == "closed on 3/3" and a["states"] == {"closed": 3}
            assert [n["node"] for n in a["per_node"]] == list(NODES)
            # The serving node advertises where its console is.
            urls = {n["node_id"]: n["control_url"] for n in fleet["nodes"]}
            assert urls["n1"] is None and urls["n2"] is None
            sups[2].force_open("b", 60.0, "local drill", actor="erin")  # node scope, on n2
            while True:
                stats = await p.recv_type("stats")
                assert stats["scope"] == "fleet" and stats["endpoints"] == []
                b = endpoint(stats["fleet"], "b")
                if b["open_on"] == 1:
                    break
            assert b["summary"] == "open on 1/3"
            assert b["states"] == {"closed": 2, "forced_open": 1}
            n2 = next(n for n in b["per_node"] if n["node"] == "n2")
            assert n2["state"] == "forced_open" and n2["forced_reason"] == "local drill"
            assert n2["open_until_wall"] == pytest.approx(time.time() + 60, abs=5)
            ads = {n["node_id"]: n["control_url"] for n in stats["fleet"]["nodes"]}
            assert ads["n0"] == srv.url


async def test_a_fleet_force_open_through_the_control_plane_reaches_every_node(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with (
            fleet_with_console(redis_server.url) as (sups, srv),
            peer(srv.url) as watcher,
            operator(srv.url, client="alice") as op,
        ):
            assert (await fleet_hello(watcher))["scope"] == "fleet"
            await watcher.recv_type("stats")  # the feed has found the stream's end
            # A node-scope connection may act on the fleet.
            await op.send(
                {"type": "force_open", "id": "f1", "endpoint": "a", "duration": 300,
                 "reason": "incident-42", "scope": "fleet"}
            )  # fmt: skip
            ack = await op.recv_type("ack")
            assert ack["id"] == "f1" and ack["scope"] == "fleet" and ack["endpoint"] == "a"
            assert ack["nodes_acked"] == list(NODES) and ack["nodes_missing"] == []
            assert set(ack["acks"]) == set(NODES) and len(ack["command_id"]) == 16
            for sup in sups:
                assert sup.breaker("a").state is rk.BreakerState.FORCED_OPEN
                assert sup.breaker("b").state is rk.BreakerState.CLOSED
            # The fleet-scope watcher sees the command and every node's transition.
            seen: set[str] = set()
            command = None
            while len(seen) < 3 or command is None:
                frame = await watcher.recv()
                if frame["type"] == "transition" and frame["endpoint"] == "a":
                    assert frame["to"] == "forced_open" and frame["cause"] == "forced"
                    assert frame["actor"].startswith("fleet:alice@127.0.0.1:")
                    assert frame["reason"] == "incident-42"
                    assert frame["open_until_in"] == pytest.approx(300, abs=5)
                    seen.add(frame["node"])
                elif frame["type"] == "command":
                    command = frame
            assert seen == set(NODES)
            assert command["scope"] == "fleet" and command["node"] == "n0"
            assert command["command"] == "force_open" and command["duration"] == 300.0

            await op.send({"type": "reset", "id": "f2", "endpoint": "a", "scope": "fleet"})
            cleared = await op.recv_type("ack")
            assert cleared["nodes_acked"] == list(NODES) and cleared["nodes_missing"] == []
            for sup in sups:
                assert sup.breaker("a").state is rk.BreakerState.CLOSED
            await op.send({"type": "get_state", "id": 3, "scope": "fleet"})
            state = await op.recv_type("ack")
            assert state["scope"] == "fleet" and endpoint(state["fleet"], "a")["override"] is None
            assert srv.statistics().commands == 2


async def test_node_scope_stays_exactly_v1_on_a_fleet_node(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with fleet_with_console(redis_server.url) as (sups, srv), peer(srv.url) as p:
            welcome = await p.hello()
            assert set(welcome) == V1_WELCOME
            assert [e["name"] for e in welcome["snapshot"]["endpoints"]] == ["a", "b"]
            await p.send({"type": "force_open", "id": 1, "endpoint": "a", "duration": 5})
            transition = await p.recv_type("transition")
            assert set(transition) == V1_TRANSITION
            assert set(await p.recv_type("ack")) == V1_ACK
            # Only n0 acted: node scope is the default.
            assert sups[0].breaker("a").state is rk.BreakerState.FORCED_OPEN
            assert sups[1].breaker("a").state is rk.BreakerState.CLOSED


async def test_node_scope_connections_coming_and_going_never_stall_the_fleet_feed(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with fleet_with_console(redis_server.url) as (_sups, srv):
            for _ in range(2):
                async with peer(srv.url) as node_scope:
                    assert "scope" not in await node_scope.hello()
            async with peer(srv.url) as p:
                assert (await fleet_hello(p))["scope"] == "fleet"
                for _ in range(2):
                    assert (await p.recv_type("stats"))["scope"] == "fleet"
            async with peer(srv.url) as node_scope:
                assert "scope" not in await node_scope.hello()
            async with peer(srv.url) as p:
                assert (await fleet_hello(p))["scope"] == "fleet"
                assert (await p.recv_type("stats"))["scope"] == "fleet"


async def test_fleet_scope_on_a_server_without_a_fleet_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoints = [rk.EndpointConfig(name="a", provider="openai", base_url="http://127.0.0.1:1")]
    config = rk.SupervisorConfig(endpoints=endpoints, stats_interval=3600.0)
    with trio.fail_after(10):
        async with rk.open_supervisor(config) as sup, trio.open_nursery() as nursery:
            srv = await nursery.start(
                functools.partial(rk.serve_control, sup, "127.0.0.1", 0, token=TOKEN)
            )
            async with peer(srv.url) as p:
                refused = await fleet_hello(p)
                assert refused["type"] == "error" and refused["code"] == "no_fleet"
                assert "fleet-serve" in refused["message"]
                assert (await p.closed()).code == 1008
            async with operator(srv.url) as op:
                for frame in (
                    {"type": "force_open", "id": 1, "endpoint": "a", "scope": "fleet"},
                    {"type": "get_state", "id": 2, "scope": "fleet"},
                ):
                    await op.send(frame)
                    error = await op.recv_type("error")
                    assert (error["id"], error["code"]) == (frame["id"], "no_fleet")
                await op.send({"type": "reset", "id": 3, "endpoint": "a", "scope": "galaxy"})
                assert (await op.recv_type("error"))["code"] == "invalid"
                assert sup.breaker("a").state is rk.BreakerState.CLOSED
            with pytest.raises(rk.ControlConnectionError) as info:
                async with rk.open_control_client(srv.url, token=TOKEN, scope="fleet"):
                    pass
            assert info.value.code == "no_fleet"
            # The CLI: exit 1, with the server's reason.
            for argv in (
                ["state", srv.url, "--fleet"],
                ["events", srv.url, "--fleet"],
                ["reset", srv.url, "a", "--fleet"],
            ):
                code = await trio.to_thread.run_sync(_cli.main, [*argv, "--token", TOKEN])
                assert code == 1, argv
                assert "no fleet" in capsys.readouterr().err
            nursery.cancel_scope.cancel()


async def test_viewers_can_watch_the_fleet_but_never_act_on_it(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with (
            fleet_with_console(redis_server.url, allow_viewers=True) as (sups, srv),
            peer(srv.url) as viewer,
        ):
            welcome = await fleet_hello(viewer, token=None)
            assert welcome["role"] == "viewer" and welcome["scope"] == "fleet"
            await viewer.send(
                {"type": "force_open", "id": 1, "endpoint": "a", "duration": 60, "scope": "fleet"}
            )
            assert (await viewer.recv_type("error"))["code"] == "forbidden"
            await viewer.send({"type": "get_state", "id": 2, "scope": "fleet"})
            assert (await viewer.recv_type("ack"))["fleet"]["fleet"] == sups[0].fleet.name
            assert (await sups[1].fleet.view()).overrides == {}
            for sup in sups:
                assert sup.breaker("a").state is rk.BreakerState.CLOSED


async def test_a_fleet_server_holds_no_endpoints_and_serves_the_fleet(
    redis_server: RedisServer,
) -> None:
    name = fleet_name()
    configs = [node_config(redis_server.url, name, node, ["a"]) for node in NODES]
    with trio.fail_after(30):
        async with (
            nodes(configs) as sups,
            rk.open_fleet(redis_server.url, name, observer_id="turbine") as fleet,
            trio.open_nursery() as nursery,
        ):
            await registered(fleet, 3)
            srv = await nursery.start(
                functools.partial(rk.serve_fleet_control, fleet, "127.0.0.1", 0, token=TOKEN)
            )
            async with peer(srv.url) as p:
                # No scope asked: a fleet server has only the fleet to show.
                welcome = await p.hello()
                assert welcome["scope"] == "fleet" and welcome["snapshot"]["node_id"] == "turbine"
                assert endpoint(welcome["fleet"], "a")["summary"] == "closed on 3/3"
                await p.send({"type": "force_open", "id": 1, "endpoint": "a", "duration": 60})
                unknown = await p.recv_type("error")
                assert unknown["code"] == "unknown_endpoint" and "fleet" in unknown["message"]
                await p.send({"type": "get_state", "id": 2})
                assert (await p.recv_type("ack"))["snapshot"]["endpoints"] == []
            async with rk.open_control_client(srv.url, token=TOKEN, client_name="ops") as c:
                assert c.scope == "fleet"
                ack = await c.force_open("a", 60.0, "drill", scope="fleet")
                assert ack.nodes_acked == list(NODES) and ack.nodes_missing == []
                for sup in sups:
                    assert sup.breaker("a").state is rk.BreakerState.FORCED_OPEN
                snapshot = await c.get_fleet_state()
                override = endpoint(rk_dict(snapshot), "a")["override"]
                assert override["actor"].startswith("ops@") and override["origin"] == "turbine"
                await c.reset("a", scope="fleet")
                for sup in sups:
                    assert sup.breaker("a").state is rk.BreakerState.CLOSED
            nursery.cancel_scope.cancel()


def rk_dict(snapshot: Any) -> dict[str, Any]:
    import attrs

    result: dict[str, Any] = attrs.asdict(snapshot)
    return result


async def test_a_fleet_command_for_an_endpoint_no_node_has_is_noted_by_every_node(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with fleet_with_console(redis_server.url) as (sups, srv), operator(srv.url) as op:
            await op.send(
                {"type": "force_open", "id": "x", "endpoint": "later", "duration": 60,
                 "scope": "fleet"}
            )  # fmt: skip
            ack = await op.recv_type("ack")
            # Every node acks, noting it for an endpoint added later.
            assert ack["nodes_acked"] == list(NODES) and ack["absent_on"] == list(NODES)
            assert ack["nodes_missing"] == []
            for sup in sups:
                assert sup.fleet.statistics().overrides["later"].id == ack["command_id"]


async def test_redis_stalled_the_fleet_view_says_link_down_and_commands_fail_clearly(
    private_redis: RedisServer,
) -> None:
    name = fleet_name()
    configs = [node_config(private_redis.url, name, node, ["a"]) for node in NODES[:2]]
    with trio.fail_after(40):
        async with (
            nodes(configs) as sups,
            rk.open_fleet(private_redis.url, name, observer_id="turbine") as fleet,
            trio.open_nursery() as nursery,
        ):
            await registered(fleet, 2)
            srv = await nursery.start(
                functools.partial(rk.serve_fleet_control, fleet, "127.0.0.1", 0, token=TOKEN)
            )
            async with operator(srv.url) as op:
                assert private_redis.process is not None
                private_redis.process.send_signal(signal.SIGSTOP)
                try:
                    while True:
                        stats = await op.recv_type("stats")
                        if stats["fleet"]["link_status"] != "up":
                            break
                    assert stats["fleet"]["link_status"].startswith("fleet link down since ")
                    assert stats["fleet"]["fresh"] is False
                    # "Since" is when the link went down, not the time of each read.
                    since = stats["fleet"]["link_down_since"]
                    later = await op.recv_type("stats")
                    assert later["fleet"]["link_down_since"] == since
                    # The last view read is still shown.
                    assert endpoint(stats["fleet"], "a")["nodes"] == 2
                    await op.send(
                        {"type": "force_open", "id": 9, "endpoint": "a", "duration": 60,
                         "scope": "fleet"}
                    )  # fmt: skip
                    error = await op.recv_type("error")
                    assert (error["id"], error["code"]) == (9, "fleet_unavailable")
                    # The nodes keep serving their own rules; node scope still acts.
                    sups[0].force_open("a", 5.0, "local", actor="t")
                    assert sups[0].breaker("a").state is rk.BreakerState.FORCED_OPEN
                finally:
                    private_redis.process.send_signal(signal.SIGCONT)
                while True:
                    stats = await op.recv_type("stats")
                    if stats["fleet"]["link_status"] == "up":
                        break
                assert stats["fleet"]["fresh"] is True
            nursery.cancel_scope.cancel()


async def test_fleet_serve_refuses_bad_arguments_and_an_unreachable_redis(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("RAKKA_TOKEN", raising=False)
    serve = ["fleet-serve", "--redis", "redis://127.0.0.1:1/0", "--fleet", "prod"]
    assert await trio.to_thread.run_sync(_cli.main, serve) == 2
    assert "no operator token" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("fleet-serve-token-1234\n")
    bad = [
        "fleet-serve",
        "--redis",
        "localhost:6379",
        "--fleet",
        "prod",
        "--token-file",
        str(token),
    ]
    assert await trio.to_thread.run_sync(_cli.main, bad) == 2
    assert "--redis must be redis://" in capsys.readouterr().err
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(_cli.main, [*serve, "--token-file", str(token)])
    assert code == 3
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "fleet-serve-token" not in err
