"""The fleet scope of protocol v1: what a server with a fleet sends about every node.

Everything here is additive. A client asks for the fleet with ``"scope": "fleet"`` in its
``hello`` (the view it watches) or in a command (what the command acts on); the fields added to
the v1 messages for it (:data:`ADDITIVE_FIELDS`) are left out of a frame while they hold their
default, so node-scope frames are exactly what protocol v1 clients always received.

Times are Unix times: the nodes run on different machines and share no other clock.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = [
    "ADDITIVE_FIELDS",
    "FLEET",
    "NODE",
    "SCOPES",
    "FleetEndpointState",
    "FleetNodeEndpointState",
    "FleetNodeState",
    "FleetOverrideState",
    "FleetSnapshot",
]

NODE: Final = "node"
"""The default scope: the server's own supervisor (one process)."""
FLEET: Final = "fleet"
"""Every node of the server's fleet, through Redis."""
SCOPES: Final = (NODE, FLEET)

ADDITIVE_FIELDS: Final = frozenset(
    {"scope", "fleet", "node", "nodes_acked", "nodes_missing", "absent_on", "acks", "command_id"}
)
"""Fields the fleet added to v1 messages; each is omitted from a frame while it holds its
default, so a v1 peer never sees one it did not ask for."""


@attrs.frozen(kw_only=True)
class FleetOverrideState:
    """A fleet override in force: ``command`` (``force_open`` or ``disable``) until ``until``
    (null: until a fleet reset), given by ``actor`` from node ``origin`` for ``reason``."""

    id: str
    command: str
    issued_at: float
    until: float | None
    duration: float | None
    reason: str | None
    actor: str
    origin: str


@attrs.frozen(kw_only=True)
class FleetNodeEndpointState:
    """One endpoint on one node, as that node last published it (about once a second).

    Counters run since the node started; ``*_per_second`` are over its last ten seconds.
    ``open_until_wall`` is when its state's timer ends (null: no timer; ``until_reset``:
    forced without expiry). ``stale`` is true when the node has stopped publishing.
    """

    node: str
    state: str
    stale: bool
    failure_rate: float | None
    consecutive_failures: int
    trips: int
    open_until_wall: float | None
    until_reset: bool
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
class FleetEndpointState:
    """One endpoint across the fleet.

    ``summary`` reads ``"open on 3/20"`` (``open_on`` nodes failing fast out of ``nodes``
    serving it) or ``"closed on 20/20"``; ``states`` counts nodes by breaker state. Counters
    and rates are sums over the nodes; ``latency_p50``/``p95`` are the medians of the nodes'
    own percentiles and ``latency_p99_max`` the worst node's. ``override`` is the fleet
    override in force; ``per_node`` the breakdown, one entry per node, sorted by node.
    """

    name: str
    summary: str
    nodes: int
    open_on: int
    states: dict[str, int]
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
    override: FleetOverrideState | None
    per_node: list[FleetNodeEndpointState]


@attrs.frozen(kw_only=True)
class FleetNodeState:
    """One registered node: who it is, when it last published, its control server if any."""

    node_id: str
    host: str
    pid: int
    started: float
    control_url: str | None
    version: str
    last_seen: float
    stale: bool
    endpoints: int


@attrs.frozen(kw_only=True)
class FleetSnapshot:
    """The whole fleet as Redis showed it at ``wall``.

    ``link_status`` is ``"up"`` or ``"fleet link down since 12:03:04 (8s ago)"``; while the
    server's link to Redis is down, ``fresh`` is false and this is the last view it read.
    ``unreadable`` counts node records that did not parse (and were left out).
    """

    fleet: str
    wall: float
    link_up: bool
    link_down_since: float | None
    link_status: str
    fresh: bool
    nodes: list[FleetNodeState]
    endpoints: list[FleetEndpointState]
    unreadable: int = 0
