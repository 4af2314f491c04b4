"""Building the fleet view from the node records and overrides read from Redis (no I/O).

A node record is the JSON a node publishes about once a second: who it is and, per endpoint,
the figures of :func:`~._host.endpoint_figures` plus its rolling rates. Records are untrusted
input: one that does not parse is counted in ``unreadable`` and left out.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .._events import BreakerState
from ._records import FleetOverride, decode_json
from ._types import FleetEndpoint, FleetNode, FleetNodeEndpoint, FleetView

__all__ = ["STALE_INTERVALS", "build_view", "node_record", "parse_node"]

RECORD_VERSION = 1
STALE_INTERVALS = 2.5  # a node silent for this many publish intervals is shown stale
_OPEN = (BreakerState.OPEN.value, BreakerState.FORCED_OPEN.value)


def node_record(
    *,
    node_id: str,
    host: str,
    pid: int,
    started: float,
    control_url: str | None,
    version: str,
    at: float,
    interval: float,
    endpoints: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, str],
) -> str:
    """The JSON a node publishes (its registration and its figures in one value)."""
    return json.dumps(
        {
            "v": RECORD_VERSION,
            "node": node_id,
            "host": host,
            "pid": pid,
            "started": started,
            "control_url": control_url,
            "version": version,
            "at": at,
            "interval": interval,
            "endpoints": endpoints,
            "overrides": overrides,
        },
        separators=(",", ":"),
    )


def _num(value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _text(value: Any, *, optional: bool = False, limit: int = 512) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError("not a short string")
    return value


def _node_endpoint(node: str, name: str, fig: Any) -> FleetNodeEndpoint:
    if not isinstance(fig, dict):
        raise ValueError("endpoint figures must be an object")
    until = _num(fig.get("open_until"), optional=True)
    if fig.get("until_reset") is True:
        until = math.inf
    return FleetNodeEndpoint(
        node=node,
        endpoint=name,
        state=BreakerState(fig["state"]),
        failure_rate=_num(fig.get("failure_rate"), optional=True),
        consecutive_failures=_int(fig.get("consecutive_failures", 0)),
        trips=_int(fig.get("trips", 0)),
        open_until=until,
        forced_by=_text(fig.get("forced_by"), optional=True),
        forced_reason=_text(fig.get("forced_reason"), optional=True),
        requests=_int(fig.get("requests", 0)),
        errors=_int(fig.get("errors", 0)),
        rejected=_int(fig.get("rejected", 0)),
        requests_per_second=_num(fig.get("rps", 0.0)) or 0.0,
        errors_per_second=_num(fig.get("eps", 0.0)) or 0.0,
        in_flight=_int(fig.get("in_flight", 0)),
        queue_depth=_int(fig.get("queue_depth", 0)),
        limiter_utilization=_num(fig.get("limiter_utilization"), optional=True),
        latency_p50=_num(fig.get("p50"), optional=True),
        latency_p95=_num(fig.get("p95"), optional=True),
        latency_p99=_num(fig.get("p99"), optional=True),
        cost=_num(fig.get("cost", 0.0)) or 0.0,
    )


def parse_node(raw: Any, now: float) -> FleetNode | None:
    """A :class:`FleetNode` from a published record; ``None`` when it does not parse."""
    data = decode_json(raw)
    if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
        return None
    try:
        node_id = _text(data["node"], limit=256)
        assert node_id is not None
        at = _num(data["at"])
        interval = _num(data["interval"])
        assert at is not None and interval is not None and interval > 0
        raw_endpoints = data["endpoints"]
        raw_overrides = data.get("overrides") or {}
        if not isinstance(raw_endpoints, dict) or not isinstance(raw_overrides, dict):
            return None
        endpoints = {
            str(name): _node_endpoint(node_id, str(name), fig)
            for name, fig in raw_endpoints.items()
        }
        return FleetNode(
            node_id=node_id,
            host=_text(data.get("host", ""), limit=256) or "",
            pid=_int(data.get("pid", 0)),
            started=_num(data.get("started", 0.0)) or 0.0,
            control_url=_text(data.get("control_url"), optional=True),
            version=_text(data.get("version", ""), limit=64) or "",
            last_seen=at,
            stale=now - at > STALE_INTERVALS * interval,
            publish_interval=interval,
            endpoints=MappingProxyType(endpoints),
            overrides_applied=MappingProxyType(
                {str(k): str(v) for k, v in raw_overrides.items() if isinstance(v, str)}
            ),
        )
    except (KeyError, TypeError, ValueError, AssertionError):
        return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _aggregate(
    name: str, per_node: dict[str, FleetNodeEndpoint], override: FleetOverride | None
) -> FleetEndpoint:
    states: dict[str, int] = {}
    for fig in per_node.values():
        states[fig.state.value] = states.get(fig.state.value, 0) + 1
    figs = list(per_node.values())
    rps = sum(f.requests_per_second for f in figs)
    eps = sum(f.errors_per_second for f in figs)
    p99s = [f.latency_p99 for f in figs if f.latency_p99 is not None]
    return FleetEndpoint(
        name=name,
        nodes=len(figs),
        states=MappingProxyType(states),
        open_on=sum(states.get(s, 0) for s in _OPEN),
        requests=sum(f.requests for f in figs),
        errors=sum(f.errors for f in figs),
        rejected=sum(f.rejected for f in figs),
        requests_per_second=round(rps, 3),
        errors_per_second=round(eps, 3),
        error_rate=(eps / rps) if rps > 0 else None,
        in_flight=sum(f.in_flight for f in figs),
        queue_depth=sum(f.queue_depth for f in figs),
        latency_p50=_median([f.latency_p50 for f in figs if f.latency_p50 is not None]),
        latency_p95=_median([f.latency_p95 for f in figs if f.latency_p95 is not None]),
        latency_p99_max=max(p99s) if p99s else None,
        cost=sum(f.cost for f in figs),
        override=override,
        per_node=MappingProxyType(dict(sorted(per_node.items()))),
    )


def build_view(
    *,
    fleet: str,
    records: Iterable[Any],
    overrides: Mapping[Any, Any],
    now: float,
    link_up: bool,
    link_down_since: float | None,
) -> FleetView:
    """Aggregate the raw node records and the raw overrides hash into a :class:`FleetView`."""
    nodes: dict[str, FleetNode] = {}
    unreadable = 0
    for raw in records:
        if raw is None:
            continue  # registration expired between the two reads
        node = parse_node(raw, now)
        if node is None:
            unreadable += 1
        else:
            nodes[node.node_id] = node
    active: dict[str, FleetOverride] = {}
    for field, raw in overrides.items():
        name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
        override = FleetOverride.from_raw(raw)
        if override is not None and override.endpoint == name and override.active(now):
            active[name] = override
    per_endpoint: dict[str, dict[str, FleetNodeEndpoint]] = {}
    for node_id in sorted(nodes):
        for name, fig in nodes[node_id].endpoints.items():
            per_endpoint.setdefault(name, {})[node_id] = fig
    endpoints = {
        name: _aggregate(name, per_endpoint.get(name, {}), active.get(name))
        for name in sorted(set(per_endpoint) | set(active))
    }
    return FleetView(
        fleet=fleet,
        at=now,
        nodes=MappingProxyType(dict(sorted(nodes.items()))),
        endpoints=MappingProxyType(endpoints),
        overrides=MappingProxyType(active),
        link_up=link_up,
        link_down_since=link_down_since,
        fresh=True,
        unreadable=unreadable,
    )
