"""The incident view on the wire: rolling rates, limiter use and deployments.

Protocol v1 grows here only by optional fields (``null`` or absent for an older server, and
ignored by older clients): each endpoint of a snapshot or ``stats`` frame may carry
``recent`` (:class:`RecentState`) and ``limiter`` (:class:`LimiterState`), and the snapshot
``deployments`` (:class:`DeploymentState`). The sparkline series travel in every frame, so a
console draws them without asking for anything.

The builders read the supervisor's frozen statistics and never fail on a missing figure:
what is not reported is ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

__all__ = [
    "DeploymentState",
    "FallbackState",
    "LimitState",
    "LimiterState",
    "RecentState",
    "deployment_states",
    "limiter_state",
    "recent_state",
]

MAX_FALLBACK_ROUTES: Final = 20  # per deployment in a frame: the busiest ones


@attrs.frozen(kw_only=True)
class RecentState:
    """An endpoint's rolling window: ``requests`` and ``attempts`` per second by outcome over
    the last ``window`` seconds (only outcomes that happened), ``retries`` per second,
    ``error_rate`` (0..1, cancelled requests left out; null while idle), the latency
    percentiles of recent completed calls (seconds), and per-bucket counts of
    ``bucket`` seconds, oldest first, the last one in progress (``requests_series``,
    ``errors_series``). Leading empty buckets are left out of both (they end on the same
    bucket) and ``errors_series`` is ``[]`` when no bucket had an error."""

    window: float
    bucket: float
    requests: dict[str, float]
    attempts: dict[str, float]
    retries: float
    error_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    requests_series: list[int]
    errors_series: list[int]


@attrs.frozen(kw_only=True)
class LimitState:
    """One limit: ``name`` (``rpm``, ``tpm``, ``input_tpm``, ``output_tpm``,
    ``concurrency``), ``used`` (0..1), the ``limit`` in force and the ``configured`` one (the
    limit is lower when the provider's rate-limit headers lowered it)."""

    name: str
    used: float
    limit: int
    configured: int


@attrs.frozen(kw_only=True)
class LimiterState:
    """An endpoint's rate limiter split by limit; ``paused_for`` is the seconds left of a
    pause after a provider 429 (null when not paused); ``waiting`` the requests queued for
    budget."""

    limits: list[LimitState]
    paused_for: float | None
    waiting: int


@attrs.frozen(kw_only=True)
class FallbackState:
    """Requests of a deployment that moved ``from_endpoint`` (``"from"`` on the wire) ``to``
    another endpoint because of ``cause`` (an error class name): ``per_second`` now and
    ``total`` since start."""

    from_endpoint: str
    to: str
    cause: str
    per_second: float
    total: int


@attrs.frozen(kw_only=True)
class DeploymentState:
    """A deployment: its ``endpoints`` in order and ``strategy``, how many can take calls now
    (``serving``), user requests per second by final outcome, ``success_rate`` (0..1,
    cancelled left out; null while idle), its ``fallbacks`` (busiest first) and per-bucket
    series as in :class:`RecentState`."""

    name: str
    strategy: str
    endpoints: list[str]
    serving: int | None
    window: float | None
    bucket: float | None
    requests: dict[str, float]
    success_rate: float | None
    fallbacks: list[FallbackState]
    requests_series: list[int]
    errors_series: list[int]


def _num(value: Any, digits: int = 3) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return round(float(value), digits)


def _rates(rates: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, rate in rates.items():
        value = _num(rate)
        if value:  # rounded to zero: nothing worth sending
            out[str(label)] = value
    return out


def _series(requests: Sequence[int], errors: Sequence[int]) -> tuple[list[int], list[int]]:
    """Both series without their leading empty buckets (they stay aligned on the bucket in
    progress); the errors are ``[]`` when no bucket had one."""
    start = next((i for i, c in enumerate(requests) if c), len(requests))
    if start == len(requests) and requests:
        start = len(requests) - 1  # keep the bucket in progress: the series says "now: 0"
    kept = [int(c) for c in requests[start:]]
    failed = [int(c) for c in errors[start:]] if any(errors) else []
    return kept, failed


def recent_state(metrics: Any) -> RecentState | None:
    """The wire form of ``EndpointMetrics.recent`` (``None`` when absent or idle for the
    whole span: nothing to draw)."""
    recent = getattr(metrics, "recent", None)
    if recent is None or (not recent.requests_series and not recent.attempts):
        return None
    requests_series, errors_series = _series(recent.requests_series, recent.errors_series)
    return RecentState(
        window=_num(recent.window) or 0.0,
        bucket=_num(recent.bucket_seconds) or 0.0,
        requests=_rates(recent.requests),
        attempts=_rates(recent.attempts),
        retries=_num(recent.retries) or 0.0,
        error_rate=_num(recent.error_rate, 4),
        p50=_num(recent.latency_p50, 4),
        p95=_num(recent.latency_p95, 4),
        p99=_num(recent.latency_p99, 4),
        requests_series=requests_series,
        errors_series=errors_series,
    )


def limiter_state(metrics: Any, now: float) -> LimiterState | None:
    """The wire form of ``EndpointMetrics.limits`` at Trio time ``now``."""
    use = getattr(metrics, "limits", None)
    if use is None:
        return None
    paused = use.paused_until
    return LimiterState(
        limits=[
            LimitState(
                name=lim.name,
                used=_num(lim.used, 4) or 0.0,
                limit=int(lim.limit),
                configured=int(lim.configured),
            )
            for lim in use.limits
        ],
        paused_for=None if paused is None else _num(max(0.0, paused - now)),
        waiting=int(use.waiting),
    )


def _fallbacks(dep: Any) -> list[FallbackState]:
    totals: Mapping[tuple[str, str, str], int] = dep.fallback_routes
    recent = dep.recent
    rates: Mapping[tuple[str, str, str], float] = recent.fallbacks if recent is not None else {}
    routes = set(totals) | set(rates)
    ranked = sorted(routes, key=lambda r: (-rates.get(r, 0.0), -totals.get(r, 0), r))
    return [
        FallbackState(
            from_endpoint=left,
            to=to,
            cause=cause,
            per_second=_num(rates.get((left, to, cause), 0.0)) or 0.0,
            total=int(totals.get((left, to, cause), 0)),
        )
        for left, to, cause in ranked[:MAX_FALLBACK_ROUTES]
    ]


def deployment_states(statistics: Any) -> list[DeploymentState] | None:
    """Every deployment of a ``SupervisorStatistics`` (``None`` when it reports none)."""
    deployments: Mapping[str, Any] = getattr(statistics, "deployments", None) or {}
    if not deployments:
        return None
    states = []
    for name, dep in deployments.items():
        recent = dep.recent
        requests_series, errors_series = (
            _series(recent.requests_series, recent.errors_series)
            if recent is not None
            else ([], [])
        )
        states.append(
            DeploymentState(
                name=str(name),
                strategy=str(dep.strategy),
                endpoints=[str(e) for e in dep.endpoints],
                serving=dep.serving,
                window=_num(recent.window) if recent is not None else None,
                bucket=_num(recent.bucket_seconds) if recent is not None else None,
                requests=_rates(recent.requests) if recent is not None else {},
                success_rate=_num(recent.success_rate, 4) if recent is not None else None,
                fallbacks=_fallbacks(dep),
                requests_series=requests_series,
                errors_series=errors_series,
            )
        )
    return states
