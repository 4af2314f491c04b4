"""Server frames built from supervisor events and statistics.

They are JSON-safe: enums become their string values, Trio-clock times become both "seconds
from now" (``open_until_in``, ``open_for``) and Unix wall-clock times (``open_until_wall``),
and ``math.inf`` ("until reset") becomes ``null`` with ``until_reset: true``.
"""

import math
import time
import urllib.parse
from typing import Any

from .._events import (
    Command,
    EndpointAdded,
    EndpointRemoved,
    Event,
    Lagged,
    Stats,
    TaskRestarted,
    Transition,
)
from .._redact import redact
from ._incident import deployment_states, limiter_state, recent_state
from ._schema import (
    CommandFrame,
    EndpointAddedFrame,
    EndpointRemovedFrame,
    EndpointState,
    HistoryFrame,
    LaggedFrame,
    ServerFrame,
    Snapshot,
    StatsFrame,
    TaskRestartedFrame,
    TransitionFrame,
)

# --- events and statistics -> frames --------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> float | None:
    """A JSON-safe float: ``None`` for missing or non-finite values, rounded for compactness."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return round(float(value), digits)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _timer(until: float | None, now: float, wall: float) -> tuple[float | None, float | None, bool]:
    """``(open_until_in, open_until_wall, until_reset)`` for a Trio-clock deadline."""
    if until is None:
        return None, None, False
    if math.isinf(until):
        return None, None, True
    remaining = max(0.0, until - now)
    return _num(remaining), _num(wall + remaining), False


def _safe_url(url: str) -> str:
    """The base URL without credentials, query or fragment (keys hide there), redacted."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
        cleaned = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        cleaned = "<unparseable url>"
    return redact(cleaned)


def _clean(text: str | None) -> str | None:
    return None if text is None else redact(text)


def endpoint_state(stats: Any, now: float, wall: float) -> EndpointState:
    """Build the wire form of one :class:`~rakka_trio.EndpointStatistics` at Trio time
    ``now`` / Unix time ``wall``.

    Optional subsystem figures are read from the statistics object when present
    (``in_flight``, ``queue_depth``, ``limiter_utilization``, ``latency_p50/p95/p99``), so
    they appear on the wire as soon as the supervisor reports them.
    """
    breaker = stats.breaker
    until_in, until_wall, until_reset = _timer(breaker.open_until, now, wall)
    state = breaker.state.value
    opened_at = breaker.opened_at
    open_for = (
        _num(max(0.0, now - opened_at))
        if opened_at is not None and state in ("open", "half_open", "forced_open")
        else None
    )
    return EndpointState(
        name=stats.name,
        provider=stats.provider,
        base_url=_safe_url(stats.base_url),
        state=state,
        consecutive_failures=breaker.consecutive_failures,
        failures=breaker.failures,
        successes=breaker.successes,
        rejected=breaker.rejected,
        trips=breaker.trips,
        failure_rate=_num(breaker.failure_rate, 4),
        calls_in_window=breaker.calls_in_window,
        failures_in_window=breaker.failures_in_window,
        open_for=open_for,
        open_until_in=until_in,
        open_until_wall=until_wall,
        until_reset=until_reset,
        forced_reason=_clean(breaker.forced_reason),
        forced_by=_clean(breaker.forced_by),
        probes_in_flight=breaker.probes_in_flight,
        in_flight=_count(getattr(stats, "in_flight", None)),
        queue_depth=_count(getattr(stats, "queue_depth", None)),
        limiter_utilization=_num(getattr(stats, "limiter_utilization", None), 4),
        latency_p50=_num(getattr(stats, "latency_p50", None), 4),
        latency_p95=_num(getattr(stats, "latency_p95", None), 4),
        latency_p99=_num(getattr(stats, "latency_p99", None), 4),
        recent=recent_state(getattr(stats, "metrics", None)),
        limiter=limiter_state(getattr(stats, "metrics", None), now),
    )


def snapshot_from_statistics(statistics: Any, *, wall: float | None = None) -> Snapshot:
    """Build a :class:`Snapshot` from a :class:`~rakka_trio.SupervisorStatistics`.

    ``wall`` is the Unix time matching ``statistics.at`` (default: now).
    """
    wall = time.time() if wall is None else wall
    now = statistics.at
    return Snapshot(
        node_id=statistics.node_id,
        wall=_num(wall) or 0.0,
        endpoints=[endpoint_state(s, now, wall) for s in statistics.endpoints.values()],
        deployments=deployment_states(statistics),
    )


def frame_from_event(event: Event) -> ServerFrame | None:
    """The wire frame for a supervisor event (``None`` for event kinds not forwarded)."""
    wall = _num(event.wall) or 0.0
    if isinstance(event, Transition):
        until_in, until_wall, until_reset = _timer(event.open_until, event.at, event.wall)
        return TransitionFrame(
            wall=wall,
            endpoint=event.endpoint,
            from_state=event.from_state.value,
            to_state=event.to_state.value,
            cause=event.cause,
            consecutive_failures=event.consecutive_failures,
            failure_rate=_num(event.failure_rate, 4),
            calls_in_window=event.calls_in_window,
            trips=event.trips,
            open_until_in=until_in,
            open_until_wall=until_wall,
            until_reset=until_reset,
            actor=_clean(event.actor),
            reason=_clean(event.reason),
        )
    if isinstance(event, Command):
        return CommandFrame(
            wall=wall,
            endpoint=event.endpoint,
            command=event.command,
            actor=redact(event.actor),
            reason=_clean(event.reason),
            duration=_num(event.duration),
        )
    if isinstance(event, Stats):
        snap = snapshot_from_statistics(event.statistics, wall=event.wall)
        return StatsFrame(
            node_id=snap.node_id,
            wall=snap.wall,
            endpoints=snap.endpoints,
            deployments=snap.deployments,
        )
    if isinstance(event, Lagged):
        return LaggedFrame(wall=wall, dropped=event.dropped)
    if isinstance(event, EndpointAdded):
        return EndpointAddedFrame(wall=wall, endpoint=event.endpoint)
    if isinstance(event, EndpointRemoved):
        return EndpointRemovedFrame(wall=wall, endpoint=event.endpoint)
    if isinstance(event, TaskRestarted):
        return TaskRestartedFrame(
            wall=wall,
            task=event.task,
            error=redact(event.error),
            crashes=event.crashes,
            backoff=_num(event.backoff) or 0.0,
        )
    return None


def history_frames(events: Any) -> list[HistoryFrame]:
    """The ``transition`` and ``command`` frames of a supervisor's ``history()``, oldest
    first (a welcome carries them)."""
    frames: list[HistoryFrame] = []
    for event in events:
        frame = frame_from_event(event)
        if isinstance(frame, TransitionFrame | CommandFrame):
            frames.append(frame)
    return frames
