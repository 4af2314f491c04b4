"""The fleet against a real redis-server, with several nodes (supervisors) in this process.

Covers the steady-state Redis cost (counted by Redis itself), commands and their audit,
expiry, endpoints that appear later, hostile data in Redis, a clean leave, secrets, and the
failure story: Redis killed, stalled (SIGSTOP) and restarted empty, and a node started while
Redis is down.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import MockProvider, serve_mock_provider
from tests.conftest import RedisServer

pytestmark = pytest.mark.trio

KEY = "sk-fleet-redis-test-key-01"


def fleet_name() -> str:
    return f"t{time.time_ns()}"


def endpoints(names: list[str], base_url: str = "http://127.0.0.1:9/v1") -> list[rk.EndpointConfig]:
    return [
        rk.EndpointConfig(
            name=name,
            provider="openai",
            base_url=base_url,
            credential=rk.StaticCredential(KEY),
            retry=rk.RetryPolicy(max_retries=0),
        )
        for name in names
    ]


def node_config(
    url: str, fleet: str, node: str, names: list[str], base_url: str = "http://127.0.0.1:9/v1",
    **fleet_options: Any,
) -> rk.SupervisorConfig:  # fmt: skip
    options: dict[str, Any] = {"publish_interval": 0.5, "node_ttl": 3.0, **fleet_options}
    return rk.SupervisorConfig(
        redis_url=url,
        node_id=node,
        fleet=rk.FleetConfig(name=fleet, **options),
        endpoints=endpoints(names, base_url),
    )


@asynccontextmanager
async def nodes(configs: list[rk.SupervisorConfig]) -> AsyncIterator[list[rk.Supervisor]]:
    async with trio.open_nursery() as nursery:
        sups = [await nursery.start(rk.run_supervisor, config) for config in configs]
        yield sups
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], step: float = 0.02) -> None:
    while not predicate():  # noqa: ASYNC110 (the state lives in other tasks and in Redis)
        await trio.sleep(step)


async def registered(fleet: rk.Fleet, count: int) -> rk.FleetView:
    while True:
        view = await fleet.view()
        if len(view.nodes) >= count and all(n.endpoints for n in view.nodes.values()):
            return view
        await trio.sleep(0.05)


def resp(redis: RedisServer, *args: str) -> bytes:
    """One command in the RESP protocol (values with quotes and spaces pass unchanged)."""
    import socket

    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += f"${len(data)}\r\n".encode() + data + b"\r\n"
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2.0) as conn:
        conn.sendall(payload)
        return conn.recv(65536)


def commandstats(redis: RedisServer) -> dict[str, int]:
    raw = redis.command("INFO", "commandstats").decode()
    calls: dict[str, int] = {}
    for line in raw.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls[name.removeprefix("cmdstat_")] = int(rest.split(",")[0].split("=")[1])
    return calls


async def test_steady_state_costs_at_most_two_redis_commands_per_node_per_second(
    private_redis: RedisServer,
) -> None:
    name = fleet_name()
    many = [f"ep{i}" for i in range(20)]
    configs = [
        node_config(private_redis.url, name, f"n{i}", many, publish_interval=1.0, node_ttl=5.0)
        for i in range(4)
    ]
    with trio.fail_after(30):
        async with nodes(configs) as sups:
            await registered(sups[0].fleet, 4)
            await trio.sleep(1.5)  # past start-up: reconcile, subscribe, first publications
            before = [s.fleet.statistics().redis_commands for s in sups]
            private_redis.command("CONFIG", "RESETSTAT")
            started = time.monotonic()
            await trio.sleep(5.0)
            stats = commandstats(private_redis)
            elapsed = time.monotonic() - started
            after = [s.fleet.statistics().redis_commands for s in sups]
    # Everything Redis executed in the window, except this test's own INFO and CONFIG.
    executed = sum(n for cmd, n in stats.items() if cmd not in ("info", "config|resetstat"))
    per_node_second = executed / (4 * elapsed)
    print(f"{per_node_second:.2f} Redis commands per node per second with 20 endpoints")
    assert per_node_second <= 2.0
    assert per_node_second >= 0.8  # the nodes did publish (about once a second each)
    assert stats.get("set", 0) >= 4 * 4  # one record per node per second, pipelined
    # The link's own count agrees with what Redis saw.
    counted = sum(after) - sum(before)
    assert counted / (4 * elapsed) <= 2.0


async def test_a_fleet_command_is_stored_broadcast_acked_and_audited(
    redis_server: RedisServer,
) -> None:
    name = fleet_name()
    configs = [node_config(redis_server.url, name, f"n{i}", ["a", "b"]) for i in range(3)]
    with trio.fail_after(20):
        async with nodes(configs) as sups:
            await registered(sups[0].fleet, 3)
            reason = "provider says fine (key sk-proj-leakedkey12345)"
            result = await sups[1].fleet.disable("a", 60.0, reason, actor="carol")
            assert result.nodes_acked == ("n0", "n1", "n2")
            assert result.nodes_missing == () and result.absent_on == ()
            assert result.override.origin == "n1" and result.override.actor == "carol"
            assert result.override.reason == "provider says fine (key ***)"
            for sup in sups:
                assert sup.breaker("a").state is rk.BreakerState.DISABLED
                assert sup.breaker("b").state is rk.BreakerState.CLOSED
                known = sup.fleet.statistics().overrides["a"]
                assert known.id == result.command_id
            view = await sups[2].fleet.view()
            assert view.overrides["a"].command == "disable"
            await trio.sleep(1.2)  # the nodes' transitions reach the stream with a publication
            events = await sups[0].fleet.recent_events()
            commands = [e for e in events if e.kind == "command"]
            assert [(e.node, e.fields["scope"], e.fields["actor"]) for e in commands] == [
                ("n1", "fleet", "carol")
            ]
            assert commands[0].fields["reason"] == "provider says fine (key ***)"
            transitions = {e.node for e in events if e.kind == "transition"}
            assert transitions == {"n0", "n1", "n2"}
            # A node-scope command is audited in the fleet stream too; a console tails the
            # stream from the last id it saw.
            sups[0].force_open("b", 30.0, "local test", actor="dave")
            await trio.sleep(1.2)
            newer = await sups[2].fleet.recent_events(after=events[-1].id)
            assert [(e.kind, e.node, e.endpoint) for e in newer] == [
                ("command", "n0", "b"),
                ("transition", "n0", "b"),
            ]
            assert newer[0].fields["scope"] == "node" and newer[0].fields["actor"] == "dave"
            assert await sups[2].fleet.recent_events(after=newer[-1].id) == []


async def test_overrides_expire_by_themselves(redis_server: RedisServer) -> None:
    name = fleet_name()
    configs = [node_config(redis_server.url, name, f"n{i}", ["a"]) for i in range(2)]
    with trio.fail_after(20):
        async with nodes(configs) as sups:
            await registered(sups[0].fleet, 2)
            result = await sups[0].fleet.force_open("a", 1.0, "short")
            assert result.complete
            for sup in sups:
                assert sup.breaker("a").state is rk.BreakerState.FORCED_OPEN
            await until(
                lambda: all(s.breaker("a").state is rk.BreakerState.HALF_OPEN for s in sups)
            )
            assert "a" not in (await sups[0].fleet.view()).overrides
            # A node that starts after the expiry is not forced.
            async with nodes([node_config(redis_server.url, name, "late", ["a"])]) as (late,):
                assert late.breaker("a").state is rk.BreakerState.CLOSED


async def test_an_endpoint_added_later_is_forced_before_its_first_call(
    redis_server: RedisServer,
) -> None:
    name = fleet_name()
    configs = [
        node_config(redis_server.url, name, "with", ["a", "x"]),
        node_config(redis_server.url, name, "without", ["a"]),
    ]
    with trio.fail_after(20):
        async with nodes(configs) as (with_x, without_x):
            await registered(with_x.fleet, 2)
            result = await with_x.fleet.force_open("x", 120.0, "incident")
            assert result.nodes_acked == ("with", "without")
            assert result.absent_on == ("without",)
            (config,) = endpoints(["x"])
            without_x.add_endpoint(config)
            # Synchronously: no request can slip in between add_endpoint and the override.
            assert without_x.breaker("x").state is rk.BreakerState.FORCED_OPEN
            with pytest.raises(rk.CircuitOpen):
                without_x.breaker("x").check()


async def test_hostile_data_in_redis_is_ignored(redis_server: RedisServer) -> None:
    name = fleet_name()
    prefix = f"rakka:fleet:{{{name}}}:"
    with trio.fail_after(20):
        async with nodes([node_config(redis_server.url, name, "n0", ["a"])]) as (sup,):
            await registered(sup.fleet, 1)
            resp(redis_server, "PUBLISH", prefix + "commands", '{"id":"zz","command":"boom"}')
            resp(redis_server, "PUBLISH", prefix + "commands", "not-json")
            resp(redis_server, "HSET", prefix + "overrides", "a", "garbage")
            resp(redis_server, "SET", prefix + "node:ghost", '{"v":1,"node":7}')
            resp(redis_server, "ZADD", prefix + "nodes", str(time.time()), "ghost")
            view = await sup.fleet.view()
            assert list(view.nodes) == ["n0"] and view.unreadable == 1
            assert "a" not in view.overrides
            assert sup.breaker("a").state is rk.BreakerState.CLOSED
            # Still in service: a real command goes through.
            result = await sup.fleet.force_open("a", 30.0)
            assert result.nodes_acked == ("n0",)
            assert sup.breaker("a").state is rk.BreakerState.FORCED_OPEN


async def test_a_node_leaves_the_fleet_when_it_stops(redis_server: RedisServer) -> None:
    name = fleet_name()
    prefix = f"rakka:fleet:{{{name}}}:"
    with trio.fail_after(20):
        async with nodes([node_config(redis_server.url, name, "n0", ["a"])]) as (sup,):
            await registered(sup.fleet, 1)
            assert redis_server.command("EXISTS", prefix + "node:n0") == b":1\r\n"
        assert redis_server.command("EXISTS", prefix + "node:n0") == b":0\r\n"
        assert redis_server.command("ZSCORE", prefix + "nodes", "n0") == b"$-1\r\n"


async def test_no_secret_reaches_redis_records_logs_or_events(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = "fleet-redis-s3cret-pass"
    private_redis.command("CONFIG", "SET", "requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{private_redis.port}/0"
    name = fleet_name()
    caplog.set_level(logging.DEBUG, logger="rakka_trio")
    with trio.fail_after(20):
        async with nodes([node_config(url, name, "n0", ["a"])]) as (sup,):
            sup.fleet.set_control_url("ws://op:token-123456@127.0.0.1:8765/?token=abc")
            async with sup.open_subscription(stats=False) as events:
                await registered(sup.fleet, 1)
                await trio.sleep(0.6)
                view = await sup.fleet.view()
                assert view.nodes["n0"].control_url == "ws://127.0.0.1:8765/"
                private_redis.kill()
                await until(lambda: not sup.fleet.statistics().link_up)
                seen = []
                while True:
                    event = events.receive_nowait()
                    seen.append(event)
                    if isinstance(event, rk.FleetLinkChanged):
                        break
            texts = [
                repr(sup.fleet),
                repr(sup.fleet.statistics()),
                repr(await sup.fleet.view()),
                *map(repr, seen),
                caplog.text,
            ]
    assert any("link down" in t for t in texts)
    for text in texts:
        assert password not in text
        assert "token-123456" not in text


async def test_redis_killed_nodes_keep_their_overrides_and_serve_then_reconverge(
    private_redis: RedisServer,
) -> None:
    name = fleet_name()
    mock = MockProvider(api_key=KEY, reply="hi", chunks=2)
    request = rk.ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mock_provider, mock)
            base = mock.base_url_for("openai")
            configs = [
                node_config(private_redis.url, name, f"n{i}", ["primary", "backup"], base)
                for i in range(2)
            ]
            async with nodes(configs) as sups:
                await registered(sups[0].fleet, 2)
                forced = await sups[0].fleet.force_open("primary", 300.0, "incident")
                assert forced.complete

                private_redis.kill()
                await until(lambda: all(not s.fleet.statistics().link_up for s in sups))
                down = sups[1].fleet.statistics().link_down_since
                assert down is not None and down <= time.time()
                view = await sups[1].fleet.view()
                assert not view.link_up and not view.fresh
                assert view.link_down_since == down
                assert view.link_status.startswith("fleet link down since")
                assert view.overrides["primary"].id == forced.command_id  # the last known
                with pytest.raises(rk.FleetUnavailable, match="link is down"):
                    await sups[0].fleet.reset("primary")
                # Local behaviour and the last known overrides hold; requests flow.
                for sup in sups:
                    assert sup.breaker("primary").state is rk.BreakerState.FORCED_OPEN
                    with pytest.raises(rk.CircuitOpen):
                        await sup.endpoint("primary").complete(request)
                    reply = await sup.endpoint("backup").complete(request)
                    assert reply.text == "hi"

                private_redis.start()  # empty: every fleet key is gone
                await until(lambda: all(s.fleet.statistics().link_up for s in sups), 0.05)
                # The nodes stored their active override again; a node starting now sees it.
                await until(
                    lambda: private_redis.command("HEXISTS", f"rakka:fleet:{{{name}}}:overrides",
                                                  "primary") == b":1\r\n",
                )  # fmt: skip
                late_config = node_config(private_redis.url, name, "late", ["primary"], base)
                async with nodes([late_config]) as (late,):
                    assert late.breaker("primary").state is rk.BreakerState.FORCED_OPEN
                    assert late.fleet.statistics().overrides["primary"].id == forced.command_id
                view = await registered(sups[0].fleet, 2)
                assert view.overrides["primary"].id == forced.command_id
            nursery.cancel_scope.cancel()


async def test_a_stalled_redis_never_delays_a_request(private_redis: RedisServer) -> None:
    name = fleet_name()
    mock = MockProvider(api_key=KEY, reply="ok", chunks=2)
    request = rk.ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mock_provider, mock)
            config = node_config(private_redis.url, name, "n0", ["a"], mock.base_url_for("openai"))
            async with nodes([config]) as (sup,):
                await registered(sup.fleet, 1)
                assert private_redis.process is not None
                private_redis.process.send_signal(signal.SIGSTOP)
                try:
                    # Every request completes while Redis cannot answer anything.
                    for _ in range(20):
                        assert (await sup.endpoint("a").complete(request)).text == "ok"
                    view = await sup.fleet.view()  # bounded by the Redis timeout
                    assert private_redis.process.poll() is None
                finally:
                    private_redis.process.send_signal(signal.SIGCONT)
                assert not view.fresh
                await until(lambda: sup.fleet.statistics().link_up, 0.05)
            nursery.cancel_scope.cancel()


async def test_a_node_started_while_redis_is_down_serves_and_catches_up(
    private_redis: RedisServer,
) -> None:
    name = fleet_name()
    private_redis.kill()
    config = node_config(private_redis.url, name, "early", ["a"], join_timeout=0.5)
    with trio.fail_after(30):
        async with nodes([config]) as (early,):
            # open_supervisor handed it over after join_timeout: it serves on local rules.
            stats = early.fleet.statistics()
            assert not stats.link_up and stats.link_down_since is not None
            assert early.breaker("a").state is rk.BreakerState.CLOSED
            private_redis.start()
            await until(lambda: early.fleet.statistics().link_up, 0.05)
            async with nodes([node_config(private_redis.url, name, "other", ["a"])]) as (other,):
                await registered(other.fleet, 2)
                result = await other.fleet.force_open("a", 60.0, "incident")
                assert result.nodes_acked == ("early", "other")
            assert early.breaker("a").state is rk.BreakerState.FORCED_OPEN
