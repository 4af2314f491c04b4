"""The fleet without Redis: configuration, records as untrusted input, the view's aggregation,
rolling rates, and how a node applies fleet overrides to its breakers (MockClock).

The Redis-backed behaviour is in ``test_fleet_redis.py`` (in-process nodes) and
``test_fleet_processes.py`` (three node processes).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio._fleet._host import RollingRates
from rakka_trio._fleet._link import FleetLink, _safe_url
from rakka_trio._fleet._records import FleetOverride, new_command_id
from rakka_trio._fleet._view import build_view, node_record

URL = "redis://127.0.0.1:1/0"


def endpoint(name: str) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        credential=rk.StaticCredential("sk-fleet-unit-test-key"),
    )


# --- configuration ---------------------------------------------------------------------------


def test_fleet_needs_redis_url() -> None:
    with pytest.raises(rk.ConfigError, match="fleet: needs redis_url"):
        rk.SupervisorConfig(fleet=rk.FleetConfig(name="prod"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "name: must be 1-128 characters"),
        ({"name": "p", "publish_interval": 0}, "publish_interval: must be a positive"),
        ({"name": "p", "ack_timeout": math.inf}, "ack_timeout: must be a positive"),
        ({"name": "p", "node_ttl": 1.5}, "node_ttl: must be at least twice publish_interval"),
        ({"name": "p", "stream_maxlen": 10}, "stream_maxlen: must be an integer >= 100"),
        ({"name": "p", "key_prefix": "a{b}"}, "key_prefix: must be 1-64 characters"),
    ],
)
def test_fleet_config_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(rk.ConfigError, match=message):
        rk.FleetConfig(**fields)


def test_fleet_loads_from_plain_data_with_every_problem_named() -> None:
    config = rk.SupervisorConfig.from_dict(
        {"redis_url": URL, "fleet": {"name": "prod", "ack_timeout": 3}}
    )
    assert config.fleet == rk.FleetConfig(name="prod", ack_timeout=3)
    assert config.to_dict()["fleet"]["name"] == "prod"
    with pytest.raises(rk.ConfigError) as caught:
        rk.SupervisorConfig.from_dict({"redis_url": URL, "fleet": {"name": "prod", "bogus": 1}})
    assert caught.value.errors == [("$.fleet.bogus", "unknown field")]
    with pytest.raises(rk.ConfigError) as caught:
        rk.SupervisorConfig.from_dict({"redis_url": URL, "fleet": {"publish_interval": 1}})
    assert caught.value.errors == [("$.fleet.name", "is required")]


@pytest.mark.trio
async def test_sup_fleet_without_a_fleet_is_a_clear_error() -> None:
    async with rk.open_supervisor(rk.SupervisorConfig(endpoints=[endpoint("a")])) as sup:
        with pytest.raises(rk.FleetError, match="no fleet is configured"):
            sup.fleet  # noqa: B018


# --- records from Redis are untrusted ---------------------------------------------------------


def override(**changes: Any) -> FleetOverride:
    base = FleetOverride(
        id="0123456789abcdef",
        command="force_open",
        endpoint="primary",
        issued_at=1000.0,
        until=1300.0,
        duration=300.0,
        reason="incident",
        actor="alice",
        origin="node-1",
    )
    return attrs.evolve(base, **changes)


def test_an_override_round_trips_through_json() -> None:
    record = override()
    assert FleetOverride.from_raw(record.to_json().encode()) == record


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"id": "0123456789abcdef"}).encode(),
        override(command="explode").to_json().encode(),
        override(endpoint="bad name").to_json().encode(),
        override(id="XYZ").to_json().encode(),
        override(reason="x" * 501).to_json().encode(),
        override(actor="").to_json().encode(),
        override(duration=-1.0).to_json().encode(),
        override(issued_at=math.nan).to_json().encode(),
        json.dumps({**json.loads(override().to_json()), "issued_at": True}).encode(),
    ],
)
def test_malformed_overrides_are_rejected(raw: bytes) -> None:
    assert FleetOverride.from_raw(raw) is None


def test_an_override_is_active_until_its_expiry_and_a_reset_never() -> None:
    assert override().active(1299.0)
    assert not override().active(1300.0)
    assert override(until=None, duration=None).active(1e12)
    assert not override(command="reset", until=None, duration=None).active(1000.0)


# --- the view ---------------------------------------------------------------------------------


def figures(state: str, requests: int = 0, errors: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "state": state,
        "failure_rate": None,
        "consecutive_failures": 0,
        "trips": 0,
        "open_until": None,
        "until_reset": False,
        "forced_by": None,
        "forced_reason": None,
        "requests": requests,
        "errors": errors,
        "rejected": 0,
        "in_flight": 1,
        "queue_depth": 2,
        "limiter_utilization": None,
        "p50": 0.1,
        "p95": 0.2,
        "p99": 0.3,
        "cost": 0.5,
        "rps": 10.0,
        "eps": 1.0,
        **extra,
    }


def record(node: str, at: float, endpoints: dict[str, Any]) -> bytes:
    return node_record(
        node_id=node,
        host="h",
        pid=1,
        started=0.0,
        control_url=None,
        version="0",
        at=at,
        interval=1.0,
        endpoints=endpoints,
        overrides={},
    ).encode()


def test_the_view_aggregates_per_endpoint_with_state_counts_and_a_per_node_breakdown() -> None:
    now = 5000.0
    records = [
        record("n1", now, {"a": figures("forced_open", until_reset=True), "b": figures("closed")}),
        record("n2", now, {"a": figures("open", p99=0.9), "b": figures("closed")}),
        record("n3", now - 10, {"a": figures("closed")}),  # silent for 10 intervals: stale
        None,  # expired between the member read and the record read
        b"{broken",
    ]
    forced = override(endpoint="a", until=now + 60, issued_at=now - 1)
    view = build_view(
        fleet="prod",
        records=records,
        overrides={
            b"a": forced.to_json().encode(),
            b"b": b"garbage",
            b"c": forced.to_json().encode(),  # filed under another endpoint: ignored
        },
        now=now,
        link_up=True,
        link_down_since=None,
    )
    assert list(view.nodes) == ["n1", "n2", "n3"]
    assert view.nodes["n3"].stale and not view.nodes["n1"].stale
    assert view.unreadable == 1
    a = view.endpoints["a"]
    assert a.nodes == 3 and a.open_on == 2
    assert a.summary == "open on 2/3"
    assert dict(a.states) == {"forced_open": 1, "open": 1, "closed": 1}
    assert a.requests_per_second == 30.0 and a.errors_per_second == 3.0
    assert a.error_rate == pytest.approx(0.1)
    assert a.in_flight == 3 and a.queue_depth == 6 and a.cost == pytest.approx(1.5)
    assert a.latency_p99_max == 0.9
    assert a.override == forced
    assert list(a.per_node) == ["n1", "n2", "n3"]
    assert a.per_node["n1"].open_until == math.inf
    assert a.per_node["n2"].state is rk.BreakerState.OPEN
    assert view.endpoints["b"].summary == "closed on 2/2"
    assert dict(view.overrides) == {"a": forced}


def test_a_view_while_the_link_is_down_says_since_when() -> None:
    down = time.time() - 8
    view = build_view(
        fleet="prod", records=(), overrides={}, now=time.time(), link_up=False, link_down_since=down
    )
    assert view.link_status.startswith("fleet link down since ")
    assert view.link_status.endswith("(8s ago)")


def test_rolling_rates_come_from_counter_deltas_over_the_window() -> None:
    rates = RollingRates(window=10.0)
    first = {"a": {"requests": 0, "errors": 0}}
    rates.add(0.0, first)
    assert first["a"]["rps"] == 0.0
    for t in range(1, 16):
        figs = {"a": {"requests": 20 * t, "errors": 2 * t}}
        rates.add(float(t), figs)
    assert figs["a"]["rps"] == pytest.approx(20.0)
    assert figs["a"]["eps"] == pytest.approx(2.0)
    # An endpoint re-added with fresh counters never shows a negative rate.
    again = {"a": {"requests": 1, "errors": 0}}
    rates.add(16.0, again)
    assert again["a"]["rps"] == 0.0


def test_the_advertised_control_url_carries_no_credentials() -> None:
    assert _safe_url("ws://user:tok@10.0.0.5:8765/ctl?token=abc#x") == "ws://10.0.0.5:8765/ctl"
    assert _safe_url(None) is None


# --- applying overrides on a node (MockClock, no Redis) ---------------------------------------


class FakeHost:
    def __init__(self, *names: str) -> None:
        config = rk.BreakerConfig(failure_threshold=1)
        self.handles = {n: rk.BreakerHandle(n, config) for n in names}

    def breaker_for(self, name: str) -> rk.BreakerHandle | None:
        return self.handles.get(name)

    def figures(self) -> dict[str, dict[str, Any]]:
        return {}

    def open_subscription(self) -> None:
        return None

    def publish(self, event: rk.Event) -> None:
        pass


def link_for(host: FakeHost | None) -> FleetLink:
    return FleetLink(
        config=rk.FleetConfig(name="unit"),
        redis_url=URL,
        redis_timeout=0.1,
        node_id="me",
        host=host,
    )


def live_override(command: str = "force_open", duration: float | None = 30.0) -> FleetOverride:
    now = time.time()
    return override(
        id=new_command_id(),
        command=command,
        issued_at=now,
        until=None if duration is None else now + duration,
        duration=duration,
    )


@pytest.mark.trio
async def test_a_command_forces_the_breaker_for_its_remaining_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost("primary")
    link = link_for(host)
    link._on_command(live_override(duration=30.0).to_json())
    handle = host.handles["primary"]
    assert handle.state is rk.BreakerState.FORCED_OPEN
    stats = handle.statistics()
    assert stats.forced_by == "fleet:alice" and stats.forced_reason == "incident"
    assert stats.open_until is not None
    assert 29.0 < stats.open_until - trio.current_time() <= 30.0
    assert link._acks and json.loads(link._acks[0][2])["present"] is True
    # The breaker's own timer ends it: the override expires by itself.
    await trio.sleep(30.0)
    assert handle.state is rk.BreakerState.HALF_OPEN


@pytest.mark.trio
async def test_an_expired_override_is_not_applied() -> None:
    host = FakeHost("primary")
    link = link_for(host)
    stale = attrs.evolve(live_override(), until=time.time() - 1)
    link._on_command(stale.to_json())
    assert host.handles["primary"].state is rk.BreakerState.CLOSED


@pytest.mark.trio
async def test_a_live_reset_force_closes_but_a_stale_tombstone_leaves_a_tripped_breaker() -> None:
    host = FakeHost("primary", "backup")
    link = link_for(host)
    tripped = host.handles["backup"]
    tripped.record_failure(tripped.check(), rk.ServerError("boom", status=503))
    assert tripped.state is rk.BreakerState.OPEN
    # At start-up a node reads a reset kept from an earlier incident: its own breakers have
    # tripped on their own evidence, which that old reset must not erase.
    link._apply(override(endpoint="backup", command="reset", until=None), live=False)
    assert tripped.state is rk.BreakerState.OPEN
    # A reset of what the fleet forced here, or a live reset, clears it.
    link._apply(live_override(), live=False)
    assert host.handles["primary"].state is rk.BreakerState.FORCED_OPEN
    link._apply(live_override("reset", None), live=False)
    assert host.handles["primary"].state is rk.BreakerState.CLOSED
    link._on_command(attrs.evolve(live_override("reset", None), endpoint="backup").to_json())
    assert tripped.state is rk.BreakerState.CLOSED


@pytest.mark.trio
async def test_an_override_for_an_absent_endpoint_is_noted_and_applied_when_it_appears() -> None:
    host = FakeHost("primary")
    link = link_for(host)
    link._on_command(attrs.evolve(live_override("disable"), endpoint="later").to_json())
    assert json.loads(link._acks[0][2])["present"] is False
    host.handles["later"] = rk.BreakerHandle("later")
    link.endpoint_added("later")
    assert host.handles["later"].state is rk.BreakerState.DISABLED


@pytest.mark.trio
async def test_malformed_commands_are_ignored_without_an_ack() -> None:
    host = FakeHost("primary")
    link = link_for(host)
    for raw in (b"", b"{}", b"\x00\x01", b'{"id": 1}', b"[1,2]"):
        link._on_command(raw)
    assert not link._acks
    assert host.handles["primary"].state is rk.BreakerState.CLOSED


@pytest.mark.trio
async def test_fleet_commands_refuse_bad_arguments_before_any_io() -> None:
    fleet = rk.Fleet(link_for(None))
    with pytest.raises(rk.InvalidFleetCommand, match="endpoint name"):
        await fleet.force_open("no such/name")
    with pytest.raises(rk.InvalidFleetCommand, match="duration"):
        await fleet.force_open("primary", -5)
    with pytest.raises(rk.InvalidFleetCommand, match="reason"):
        await fleet.disable("primary", 10, "x" * 1000)
    with pytest.raises(rk.InvalidFleetCommand, match="actor"):
        await fleet.reset("primary", actor="")
    with pytest.raises(rk.InvalidFleetCommand, match="ack_timeout"):
        await fleet.reset("primary", ack_timeout=0)
    with pytest.raises(ValueError):  # also a ValueError, like the node-scope commands
        await fleet.force_open("primary", math.nan)
    # Valid arguments with the link down: a clear, typed refusal.
    with pytest.raises(rk.FleetUnavailable, match="link is down"):
        await fleet.force_open("primary", 10)
