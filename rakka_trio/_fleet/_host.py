"""What the fleet link needs from the process it runs in, and the supervisor's answer.

The link never touches a request: it reads figures once per publish and applies overrides
through the breaker handles' synchronous operator methods. Keeping that behind a small
protocol lets the benchmark run many light nodes in one process with the same link.
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._breaker import BreakerHandle
from .._errors import UnknownEndpoint
from .._events import Event, Subscription
from ._types import wall_until

if TYPE_CHECKING:
    from .._supervisor import Supervisor

__all__ = ["ERROR_OUTCOMES", "FleetHost", "RollingRates", "SupervisorHost"]

#: Outcomes that count as errors in the fleet's error rate (the endpoint's own failures).
ERROR_OUTCOMES = ("5xx", "timeout", "network", "error")
RATE_WINDOW = 10.0  # seconds behind the published per-second rates


class FleetHost(Protocol):
    """The node side of a fleet link."""

    def breaker_for(self, endpoint: str) -> BreakerHandle | None:
        """The breaker of ``endpoint`` on this node, ``None`` when it has none."""
        ...

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per endpoint, the JSON-ready figures to publish (see :func:`endpoint_figures`)."""
        ...

    def open_subscription(self) -> AbstractAsyncContextManager[Subscription] | None:
        """A subscription to this node's events (transitions, commands) for an ``async with``
        block, or ``None`` when the node has no events."""
        ...

    def publish(self, event: Event) -> None:
        """Publish a fleet event (link up/down) to this node's subscribers."""
        ...


def _opt(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def endpoint_figures(stats: Any, trio_now: float, wall_now: float) -> dict[str, Any]:
    """The published figures of one endpoint from its ``EndpointStatistics``."""
    breaker = stats.breaker
    metrics = stats.metrics
    requests = metrics.requests if metrics is not None else {}
    until = wall_until(breaker.open_until, trio_now, wall_now)
    return {
        "state": breaker.state.value,
        "failure_rate": _opt(breaker.failure_rate),
        "consecutive_failures": breaker.consecutive_failures,
        "trips": breaker.trips,
        "open_until": _opt(until, 3),
        "until_reset": until is not None and math.isinf(until),
        "forced_by": breaker.forced_by,
        "forced_reason": breaker.forced_reason,
        "requests": sum(requests.values()),
        "errors": sum(requests.get(k, 0) for k in ERROR_OUTCOMES),
        "rejected": breaker.rejected,
        "in_flight": stats.in_flight or 0,
        "queue_depth": stats.queue_depth or 0,
        "limiter_utilization": _opt(stats.limiter_utilization, 4),
        "p50": _opt(stats.latency_p50),
        "p95": _opt(stats.latency_p95),
        "p99": _opt(stats.latency_p99),
        "cost": metrics.cost if metrics is not None else 0.0,
    }


class SupervisorHost:
    """A supervisor as a fleet node."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def breaker_for(self, endpoint: str) -> BreakerHandle | None:
        """The endpoint's breaker, ``None`` when the supervisor has no such endpoint."""
        try:
            return self._sup.breaker(endpoint)
        except UnknownEndpoint:
            return None

    def figures(self) -> dict[str, dict[str, Any]]:
        """Every endpoint's figures from one statistics snapshot."""
        snapshot = self._sup.statistics()
        trio_now, wall_now = trio.current_time(), time.time()
        return {
            name: endpoint_figures(stats, trio_now, wall_now)
            for name, stats in snapshot.endpoints.items()
        }

    def open_subscription(self) -> AbstractAsyncContextManager[Subscription] | None:
        """Transitions and commands (no periodic stats: the link reads those itself)."""
        return self._sup.open_subscription(stats=False)

    def publish(self, event: Event) -> None:
        """Publish on the supervisor's bus."""
        self._sup.publish(event)


class RollingRates:
    """Per-endpoint requests/s and errors/s over the last :data:`RATE_WINDOW` seconds, from
    the cumulative counters of successive publications."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    def add(self, now: float, figures: dict[str, dict[str, Any]]) -> None:
        """Record the counters of ``figures`` (at Trio time ``now``) and add each endpoint's
        ``requests_per_second`` and ``errors_per_second`` to it."""
        counts = {name: (f["requests"], f["errors"]) for name, f in figures.items()}
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - self._window:
            samples.popleft()
        oldest = samples[0] if samples else None
        for name, fig in figures.items():
            rps = eps = 0.0
            if oldest is not None and now > oldest[0] and name in oldest[1]:
                requests, errors = oldest[1][name]
                elapsed = now - oldest[0]
                # A counter going down means the endpoint was removed and re-added.
                rps = max(0.0, (fig["requests"] - requests) / elapsed)
                eps = max(0.0, (fig["errors"] - errors) / elapsed)
            fig["rps"] = round(rps, 3)
            fig["eps"] = round(eps, 3)
        samples.append((now, counts))
