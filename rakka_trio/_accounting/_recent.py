"""The incident view: what is happening *now* on an endpoint and a deployment.

Running totals (``metrics.requests``) cannot say what fraction of users are failing or since
when. Each endpoint meter therefore also feeds :class:`~._rolling.RollingWindow` s (by default
10 s buckets, 5 minutes kept) and each deployment meter its own; a snapshot turns them into
rates per second by outcome, an error rate, retries per second, recent latency percentiles and
per-bucket series for sparklines (:class:`RecentActivity`, :class:`DeploymentActivity`).

The outcome labels of these windows are the incident labels (:data:`INCIDENT_OUTCOMES`): the
request labels of :data:`~._metrics.OUTCOMES`, except that a truncated stream is ``truncated``
(not ``network``) and everything turned away here before reaching the provider
(backpressure, a spent budget, our own rate limiter) is ``rejected``.

:func:`limiter_use` splits the rate limiter's use by limit (requests, tokens, concurrency),
each with the limit in force and the configured one, so a limit lowered by the provider's
headers is visible as such; :func:`can_serve` is what the deployment's ``serving`` count uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from .._errors import LimiterUnavailable, RateLimitExceeded, StreamTruncated
from ._rolling import DEFAULT_BUCKET_SECONDS, DEFAULT_BUCKETS, RollingStatistics, RollingWindow

__all__ = [
    "INCIDENT_OUTCOMES",
    "DeploymentActivity",
    "DeploymentRecent",
    "EndpointRecent",
    "LimitUse",
    "LimiterUse",
    "RecentActivity",
    "can_serve",
    "incident_outcome",
    "limiter_use",
]

#: Outcome labels of the rolling windows, in display order.
INCIDENT_OUTCOMES: Final = (
    "ok",
    "5xx",
    "429",
    "timeout",
    "network",
    "truncated",
    "filtered",
    "circuit_open",
    "rejected",
    "4xx",
    "cancelled",
    "error",
)
#: Outcomes that served the caller (a content filter's refusal is the provider's answer).
SUCCESS_OUTCOMES: Final = frozenset({"ok", "filtered"})
#: Outcomes left out of error and success rates: a caller who left says nothing about health.
UNCOUNTED_OUTCOMES: Final = frozenset({"cancelled"})
_NOT_ERRORS: Final = SUCCESS_OUTCOMES | UNCOUNTED_OUTCOMES

_LIMIT_NAMES: Final = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "input_tokens_per_minute": "input_tpm",
    "output_tokens_per_minute": "output_tpm",
}
_SERVING_STATES: Final = frozenset({"closed", "half_open", "disabled"})


def incident_outcome(label: str, exc: BaseException | None) -> str:
    """The incident label (one of :data:`INCIDENT_OUTCOMES`) for a request or attempt that
    was counted as ``label`` (one of :data:`~._metrics.OUTCOMES`) and ended with ``exc``."""
    if label == "network":
        return "truncated" if isinstance(exc, StreamTruncated) else label
    if label in ("backpressure", "budget"):
        return "rejected"
    if label == "429" and isinstance(exc, RateLimitExceeded):
        return "rejected"  # our own limiter said no: nothing was sent
    if label == "error" and isinstance(exc, LimiterUnavailable):
        return "rejected"
    return label


def _error_rate(stats: RollingStatistics) -> float | None:
    return stats.share(
        (label for label in stats.counts if label not in _NOT_ERRORS),
        of_excluding=UNCOUNTED_OUTCOMES,
    )


def _frozen_rates(stats: RollingStatistics) -> Mapping[str, float]:
    return MappingProxyType({k: v for k, v in stats.rates.items() if v > 0})


# --- endpoints -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RecentActivity:
    """One endpoint over its rolling window (``EndpointMetrics.recent``).

    ``requests`` and ``attempts`` are events per second by incident outcome over the last
    ``window`` seconds (labels without events are left out); ``retries`` tries repeated per
    second. ``error_rate`` is the share of requests that did not end ``ok`` or ``filtered``
    (cancelled ones left out; ``None`` while idle). The latency percentiles (seconds) are those
    of calls completed in the last two buckets. ``requests_series`` and ``errors_series``
    count each bucket of ``bucket_seconds``, oldest first, the last one in progress (empty
    when nothing happened in the whole span).
    """

    window: float
    bucket_seconds: float
    requests: Mapping[str, float]
    attempts: Mapping[str, float]
    retries: float
    error_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    requests_series: tuple[int, ...]
    errors_series: tuple[int, ...]

    @property
    def request_rate(self) -> float:
        """Requests per second, every outcome."""
        return sum(self.requests.values())

    @property
    def error_per_second(self) -> float:
        """Failed requests per second (the numerator of ``error_rate``)."""
        return sum(r for label, r in self.requests.items() if label not in _NOT_ERRORS)


class EndpointRecent:
    """The rolling windows of one endpoint, fed by its meter (internal)."""

    __slots__ = ("attempts", "requests", "retries")

    def __init__(
        self, bucket_seconds: float = DEFAULT_BUCKET_SECONDS, buckets: int = DEFAULT_BUCKETS
    ) -> None:
        self.requests = RollingWindow(bucket_seconds=bucket_seconds, buckets=buckets)
        self.attempts = RollingWindow(bucket_seconds=bucket_seconds, buckets=buckets)
        self.retries = RollingWindow(bucket_seconds=bucket_seconds, buckets=buckets)

    def snapshot(self, now: float) -> RecentActivity:
        """The activity at Trio time ``now``."""
        requests = self.requests.statistics(now)
        attempts = self.attempts.statistics(now, series=False)
        retries = self.retries.statistics(now, series=False)
        return RecentActivity(
            window=requests.window,
            bucket_seconds=requests.bucket_seconds,
            requests=_frozen_rates(requests),
            attempts=_frozen_rates(attempts),
            retries=retries.total_rate(),
            error_rate=_error_rate(requests),
            latency_p50=requests.latency_p50,
            latency_p95=requests.latency_p95,
            latency_p99=requests.latency_p99,
            requests_series=requests.total_series(),
            errors_series=requests.total_series(exclude=_NOT_ERRORS),
        )


# --- deployments ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DeploymentActivity:
    """One deployment over its rolling window (``DeploymentStatistics.recent``).

    ``requests`` are user requests per second by final incident outcome; ``success_rate`` the
    share that ended ``ok`` or ``filtered`` (cancelled ones left out; ``None`` while idle);
    ``fallbacks`` moves per second by ``(from, to, cause)``, where ``cause`` is the error class
    name that made the request leave (``CircuitOpen``, ``ServerError``, ``RateLimited`` ...).
    The series are as in :class:`RecentActivity`.
    """

    window: float
    bucket_seconds: float
    requests: Mapping[str, float]
    success_rate: float | None
    fallbacks: Mapping[tuple[str, str, str], float]
    requests_series: tuple[int, ...]
    errors_series: tuple[int, ...]

    @property
    def request_rate(self) -> float:
        """User requests per second, every outcome."""
        return sum(self.requests.values())


class DeploymentRecent:
    """The rolling windows of one deployment (internal)."""

    __slots__ = ("_labels", "_routes", "fallbacks", "requests")

    def __init__(
        self, bucket_seconds: float = DEFAULT_BUCKET_SECONDS, buckets: int = DEFAULT_BUCKETS
    ) -> None:
        self.requests = RollingWindow(bucket_seconds=bucket_seconds, buckets=buckets)
        self.fallbacks = RollingWindow(bucket_seconds=bucket_seconds, buckets=buckets)
        # Routes are labelled by their index, so no text built from endpoint names is parsed.
        self._labels: dict[tuple[str, str, str], str] = {}
        self._routes: dict[str, tuple[str, str, str]] = {}

    def fallback(self, now: float, route: tuple[str, str, str]) -> None:
        """Count one move along ``route`` (from, to, cause) at Trio time ``now``."""
        label = self._labels.get(route)
        if label is None:
            label = self._labels[route] = str(len(self._labels))
            self._routes[label] = route
        self.fallbacks.add(now, label)

    def snapshot(self, now: float) -> DeploymentActivity:
        """The activity at Trio time ``now``."""
        requests = self.requests.statistics(now)
        moves = self.fallbacks.statistics(now, series=False)
        success = requests.share(SUCCESS_OUTCOMES, of_excluding=UNCOUNTED_OUTCOMES)
        return DeploymentActivity(
            window=requests.window,
            bucket_seconds=requests.bucket_seconds,
            requests=_frozen_rates(requests),
            success_rate=success,
            fallbacks=MappingProxyType(
                {self._routes[label]: rate for label, rate in moves.rates.items() if rate > 0}
            ),
            requests_series=requests.total_series(),
            errors_series=requests.total_series(exclude=_NOT_ERRORS),
        )


# --- the rate limiter, split by limit --------------------------------------------------------


@attrs.frozen(kw_only=True)
class LimitUse:
    """One limit of an endpoint's rate limiter: ``name`` is ``rpm``, ``tpm``, ``input_tpm``,
    ``output_tpm`` or ``concurrency``; ``used`` the share in use now (0..1: spent budget, or
    calls in flight over the permits); ``limit`` the limit in force (per minute, or concurrent
    calls) and ``configured`` the one in the endpoint's ``RateLimits``. ``limit`` is below
    ``configured`` when the provider's rate-limit headers lowered it (:attr:`lowered`)."""

    name: str
    used: float
    limit: int
    configured: int

    @property
    def lowered(self) -> bool:
        """True when the provider's headers lowered this limit below the configured one."""
        return self.limit < self.configured


@attrs.frozen(kw_only=True)
class LimiterUse:
    """An endpoint's rate limiter at a glance (``EndpointMetrics.limits``): every limit's use,
    ``paused_until`` (Trio time) while a provider 429 pauses the key, else ``None``, and the
    requests ``waiting`` in line for budget."""

    limits: tuple[LimitUse, ...]
    paused_until: float | None
    waiting: int

    @property
    def busiest(self) -> LimitUse | None:
        """The limit with the highest use (the first such one), if any."""
        return max(self.limits, key=lambda lim: lim.used, default=None)


def limiter_use(limiter: Any) -> LimiterUse | None:
    """Split a :class:`~rakka_trio.LimiterStatistics` by limit (``None`` for ``None``).

    An endpoint whose calls use several keys (model families) reports, per limit, the key
    that uses it most.
    """
    if limiter is None:
        return None
    best: dict[str, LimitUse] = {}
    paused: list[float] = []
    for key in limiter.keys:
        found = [
            LimitUse(
                name=_LIMIT_NAMES.get(lim.name, lim.name),
                used=lim.utilisation,
                limit=lim.effective_limit,
                configured=lim.limit,
            )
            for lim in key.limits
        ]
        if key.max_concurrent:
            found.append(
                LimitUse(
                    name="concurrency",
                    used=min(1.0, key.in_flight / key.max_concurrent),
                    limit=key.max_concurrent,
                    configured=key.max_concurrent,
                )
            )
        for use in found:
            held = best.get(use.name)
            if held is None or use.used > held.used:
                best[use.name] = use
        if key.paused_until is not None:
            paused.append(key.paused_until)
    order = (*_LIMIT_NAMES.values(), "concurrency")
    limits = tuple(
        sorted(best.values(), key=lambda u: order.index(u.name) if u.name in order else 99)
    )
    return LimiterUse(
        limits=limits, paused_until=max(paused) if paused else None, waiting=limiter.waiters
    )


def can_serve(endpoint: Any) -> bool:
    """Whether an :class:`~rakka_trio.EndpointStatistics` says the endpoint takes calls now:
    its breaker lets calls through (closed, half-open or disabled) and no 429 pauses its
    rate-limit key."""
    if endpoint.breaker.state.value not in _SERVING_STATES:
        return False
    limiter = endpoint.limiter
    return limiter is None or not limiter.paused
