"""The fleet's public snapshots: command results, the fleet view, link statistics, events.

Every one is frozen; times are Unix times (nodes run on different machines, so the Trio clock
of one means nothing to another).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from .._events import BreakerState, Event
from ._records import FleetOverride

__all__ = [
    "FleetCommandResult",
    "FleetEndpoint",
    "FleetEvent",
    "FleetLinkChanged",
    "FleetLinkStatistics",
    "FleetNode",
    "FleetNodeEndpoint",
    "FleetView",
]

_EMPTY: Mapping[str, int] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class FleetCommandResult:
    """What a fleet command (``sup.fleet.force_open/disable/reset``) achieved.

    ``nodes_acked`` applied it (each with its Unix time in ``acks``; ``absent_on`` lists those
    that have no such endpoint and only noted it for later); ``nodes_missing`` were live when
    the command was issued but did not ack within the timeout (frozen, partitioned or just
    dead and not yet expired). The override stays stored either way: a missing node applies
    it when it reconnects or restarts.
    """

    command_id: str
    command: str
    endpoint: str
    issued_at: float
    override: FleetOverride
    nodes_acked: tuple[str, ...]
    nodes_missing: tuple[str, ...]
    acks: Mapping[str, float]
    absent_on: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every live node acked."""
        return not self.nodes_missing


@attrs.frozen(kw_only=True)
class FleetNodeEndpoint:
    """One endpoint as one node last published it (about once a second).

    Counters (``requests``, ``errors``, ``rejected``: calls the breaker turned away) run since
    the node started; the ``*_per_second`` rates are over the node's last ten seconds.
    ``open_until`` is a Unix time (``math.inf``: forced until reset; ``None``: no timer).
    """

    node: str
    endpoint: str
    state: BreakerState
    failure_rate: float | None
    consecutive_failures: int
    trips: int
    open_until: float | None
    forced_by: str | None
    forced_reason: str | None
    requests: int
    errors: int
    rejected: int
    requests_per_second: float
    errors_per_second: float
    in_flight: int
    queue_depth: int
    limiter_utilization: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    cost: float


@attrs.frozen(kw_only=True)
class FleetNode:
    """One registered node: who it is and what it last published.

    ``stale`` is true when its last publication is older than 2.5 publish intervals (a node
    frozen, overloaded or cut off from Redis; it disappears once its registration expires).
    """

    node_id: str
    host: str
    pid: int
    started: float
    control_url: str | None
    version: str
    last_seen: float
    stale: bool
    publish_interval: float
    endpoints: Mapping[str, FleetNodeEndpoint]
    overrides_applied: Mapping[str, str] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class FleetEndpoint:
    """One endpoint across the fleet: aggregated figures, state counts and a per-node
    breakdown (``per_node``).

    ``states`` counts nodes by breaker state value; ``open_on`` counts nodes where calls fail
    fast (open or forced open) out of ``nodes`` that serve it — :attr:`summary` reads
    ``"open on 3/20"``. Rates and counters are sums; ``latency_p50``/``p95`` are the medians of
    the nodes' own percentiles and ``latency_p99_max`` the worst node's p99 (percentiles cannot
    be merged exactly from summaries). ``override`` is the fleet override in force, if any.
    """

    name: str
    nodes: int
    states: Mapping[str, int]
    open_on: int
    requests: int
    errors: int
    rejected: int
    requests_per_second: float
    errors_per_second: float
    error_rate: float | None
    in_flight: int
    queue_depth: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99_max: float | None
    cost: float
    override: FleetOverride | None
    per_node: Mapping[str, FleetNodeEndpoint]

    @property
    def summary(self) -> str:
        """``"open on 3/20"`` (or ``"closed on 20/20"`` when none is open)."""
        if self.open_on:
            return f"open on {self.open_on}/{self.nodes}"
        closed = self.states.get(BreakerState.CLOSED.value, 0)
        return f"closed on {closed}/{self.nodes}"


@attrs.frozen(kw_only=True)
class FleetView:
    """The whole fleet as Redis last showed it (:meth:`Fleet.view`).

    ``fresh`` is false when the link is down and this is the last view read before it went
    down (``link_down_since`` says since when, a Unix time). ``overrides`` holds the active
    fleet overrides by endpoint; ``unreadable`` counts node records that did not parse.
    """

    fleet: str
    at: float
    nodes: Mapping[str, FleetNode]
    endpoints: Mapping[str, FleetEndpoint]
    overrides: Mapping[str, FleetOverride]
    link_up: bool
    link_down_since: float | None
    fresh: bool = True
    unreadable: int = 0

    @property
    def link_status(self) -> str:
        """``"up"`` or ``"fleet link down since 12:03:04 (8s ago)"`` (local time)."""
        if self.link_down_since is None:
            return "up" if self.link_up else "connecting"
        since = time.strftime("%H:%M:%S", time.localtime(self.link_down_since))
        ago = max(0.0, time.time() - self.link_down_since)
        return f"fleet link down since {since} ({ago:.0f}s ago)"


@attrs.frozen(kw_only=True)
class FleetLinkStatistics:
    """This process's link to the fleet (:meth:`Fleet.statistics`).

    ``role`` is ``node`` (registered, applies and acks commands) or ``observer`` (reads and
    commands only). ``redis_commands`` counts every command sent, pipelined ones one by one.
    ``overrides`` holds the fleet overrides this node knows (applied, or noted for endpoints
    it does not have), by endpoint; ``events_dropped`` counts transitions lost because the
    buffer toward Redis was full while the link was down.
    """

    fleet: str
    node_id: str
    role: str
    link_up: bool
    link_down_since: float | None
    connected_at: float | None
    connects: int
    redis_commands: int
    heartbeats: int
    commands_applied: int
    acks_sent: int
    events_appended: int
    events_dropped: int
    control_url: str | None
    overrides: Mapping[str, FleetOverride]


@attrs.frozen(kw_only=True)
class FleetEvent:
    """One entry of the fleet's audit stream: a ``transition`` some node made or a
    ``command`` (fleet or node scope). ``at`` is the Unix time; ``fields`` the rest, as
    strings (``from``, ``to``, ``cause``, ``actor``, ``reason``, ``scope``, ...)."""

    id: str
    kind: str
    node: str
    at: float
    endpoint: str
    fields: Mapping[str, str] = _EMPTY  # type: ignore[assignment]


@attrs.frozen(kw_only=True)
class FleetLinkChanged(Event):
    """The fleet link went down (``up`` false, with the redacted ``error``) or came back.
    ``since`` is the Unix time of the change."""

    fleet: str
    up: bool
    since: float
    error: str | None = None


def wall_until(open_until: float | None, trio_now: float, wall_now: float) -> float | None:
    """A Trio-clock deadline as a Unix time (``math.inf`` and ``None`` pass through)."""
    if open_until is None or math.isinf(open_until):
        return open_until
    return wall_now + (open_until - trio_now)
