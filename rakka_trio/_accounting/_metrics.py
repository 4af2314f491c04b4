"""Per-endpoint metrics: requests and attempts by outcome, retries, latency percentiles,
tokens, cost, gauges.

Every call on an endpoint — plain ``Endpoint.stream``/``complete`` and the engine path — goes
through the endpoint's :class:`EndpointMeter`: ``begin`` (which also enforces a ``reject``
budget), ``attempt_started``/``attempt_failed``/``retried`` for each try, ``first_chunk`` and
``end``. Requests turned away before a call (backpressure, a deadline spent in the queue, a
caller who left while queued) are counted by the engine with :meth:`EndpointMeter.count`, so
each request is counted once per endpoint it reached, and each of its tries once more in
``attempts``.

Latencies are kept twice, both in constant memory: a ring of the most recent samples gives the
p50/p95/p99 reported in statistics (recent behaviour, exact over the ring), and cumulative
fixed buckets feed the Prometheus histograms. :func:`prometheus_text` renders every figure in
the Prometheus text exposition format (0.0.4).
"""

from __future__ import annotations

import bisect
import itertools
import math
from array import array
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import trio

from .._chunks import Usage
from .._errors import (
    Backpressure,
    BudgetExceeded,
    CircuitOpen,
    ContentFiltered,
    DeadlineExceeded,
    NetworkError,
    ProviderError,
    QuotaExhausted,
    RakkaError,
    RateLimited,
    RateLimitExceeded,
    ServerError,
    StreamError,
    Timeout,
)
from ._cost import BudgetStatistics, CostTracker
from ._otel import TelemetrySwitch
from ._recent import (
    DeploymentActivity,
    DeploymentRecent,
    EndpointRecent,
    LimiterUse,
    RecentActivity,
    incident_outcome,
    limiter_use,
)
from ._rolling import DEFAULT_BUCKET_SECONDS

#: Request outcome labels, in exposition order. ``429`` covers provider rate limits, quota
#: errors and our own limiter refusing; ``4xx`` other client errors; ``network`` connection
#: and stream breakage; ``cancelled`` a caller that stopped reading or was cancelled.
OUTCOMES = (
    "ok",
    "429",
    "5xx",
    "timeout",
    "filtered",
    "circuit_open",
    "backpressure",
    "budget",
    "network",
    "4xx",
    "cancelled",
    "error",
)

#: Upper bounds (seconds) of the cumulative latency histogram buckets (``+Inf`` implied).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

RECENT_SAMPLES = 512  # samples behind the reported percentiles
_NO_BUCKETS = (0,) * (len(LATENCY_BUCKETS) + 1)


def outcome_of(exc: BaseException | None, finish_reason: str | None = None) -> str:
    """The outcome label (one of :data:`OUTCOMES`) of a call that ended with ``exc``."""
    if exc is None:
        return "filtered" if finish_reason == "content_filter" else "ok"
    if isinstance(exc, RateLimited | QuotaExhausted | RateLimitExceeded):
        return "429"
    if isinstance(exc, ServerError):
        return "5xx"
    if isinstance(exc, Timeout | DeadlineExceeded):
        return "timeout"
    if isinstance(exc, ContentFiltered):
        return "filtered"
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, Backpressure):
        return "backpressure"
    if isinstance(exc, BudgetExceeded):
        return "budget"
    if isinstance(exc, NetworkError | StreamError):
        return "network"
    if isinstance(exc, ProviderError):
        return "4xx"
    if isinstance(exc, RakkaError):
        return "error"
    # Cancellation, a closed handle, or the caller's own exception: the caller left.
    return "cancelled"


@attrs.frozen(kw_only=True)
class LatencySummary:
    """Latency of one kind: ``count`` and ``total`` (seconds) since start, the p50, p95 and
    p99 of the most recent samples (``None`` before the first), and ``buckets``: cumulative
    counts at or below each bound of :data:`LATENCY_BUCKETS`, then the total (``+Inf``)."""

    count: int
    total: float
    p50: float | None
    p95: float | None
    p99: float | None
    buckets: tuple[int, ...] = ()


def _quantile(ordered: list[float], q: float) -> float:
    # Nearest rank: the smallest sample with at least q of the samples at or below it.
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Latency:
    """Recent samples in a ring (percentiles) plus cumulative buckets (histogram)."""

    __slots__ = ("_next", "_ring", "buckets", "count", "total")

    def __init__(self) -> None:
        self._ring: array[float] | None = None  # allocated on the first sample
        self._next = 0
        self.count = 0
        self.total = 0.0
        self.buckets: list[int] | None = None  # per-bucket (not cumulative) counts, +Inf last

    def record(self, seconds: float) -> None:
        """Add one sample (seconds)."""
        ring = self._ring
        if ring is None or self.buckets is None:
            ring = self._ring = array("d")
            self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        if len(ring) < RECENT_SAMPLES:
            ring.append(seconds)
        else:
            ring[self._next] = seconds
            self._next = (self._next + 1) % RECENT_SAMPLES
        self.count += 1
        self.total += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def summary(self) -> LatencySummary:
        """Count, total and recent percentiles."""
        buckets = tuple(itertools.accumulate(self.buckets or _NO_BUCKETS))
        if not self._ring:
            return LatencySummary(
                count=self.count, total=self.total, p50=None, p95=None, p99=None, buckets=buckets
            )
        ordered = sorted(self._ring)
        return LatencySummary(
            count=self.count,
            total=self.total,
            p50=_quantile(ordered, 0.50),
            p95=_quantile(ordered, 0.95),
            p99=_quantile(ordered, 0.99),
            buckets=buckets,
        )


@attrs.frozen(kw_only=True)
class TokenTotals:
    """Tokens reported by the provider since start (cached and reasoning are parts of input
    and output)."""

    input: int
    output: int
    cached: int
    reasoning: int


@attrs.frozen(kw_only=True)
class EndpointMetrics:
    """A snapshot of one endpoint's metrics (``EndpointStatistics.metrics``).

    ``requests`` counts requests by their final outcome here (every label of
    :data:`OUTCOMES`); ``attempts`` counts every try with its own outcome, under the same
    labels (a request that met two 503s and then succeeded adds ``5xx: 2, ok: 1``), and
    ``retries`` the tries repeated on this endpoint. ``ttft`` is the
    time from the call's start to its first chunk, ``latency`` the whole call (calls that
    completed), ``queue_wait`` the time requests spent in the engine queue. ``cost`` is USD
    since start and ``budget`` the rolling spend. ``queue_depth`` counts waiting requests,
    ``busy_workers`` requests being served by the engine, ``in_flight`` every call in progress
    (engine and plain calls), ``max_concurrent`` the engine's current worker limit (halved
    while a ``throttle`` budget is exceeded). ``limiter_utilization`` is the rate limiter's
    highest utilisation (0..1) and ``breaker_state`` the breaker's state.

    ``recent`` is what is happening now (rolling rates by outcome, error rate, retries,
    latency, sparkline series) and ``limits`` the rate limiter split by limit, with its
    pause; both are ``None`` when not reported.
    """

    endpoint: str
    requests: Mapping[str, int]
    attempts: Mapping[str, int]
    retries: int
    ttft: LatencySummary
    latency: LatencySummary
    queue_wait: LatencySummary
    tokens: TokenTotals
    cost: float
    budget: BudgetStatistics
    queue_depth: int
    busy_workers: int
    workers: int
    max_concurrent: int
    in_flight: int
    limiter_utilization: float | None
    breaker_state: str
    recent: RecentActivity | None = None
    limits: LimiterUse | None = None


class CallRecord:
    """One call being measured (from :meth:`EndpointMeter.begin`)."""

    __slots__ = ("_first", "_meter", "_model", "_span", "_start", "_tries", "_trying")

    def __init__(self, meter: EndpointMeter, model: str | None, start: float) -> None:
        self._meter = meter
        self._model = model
        self._start = start
        self._first = False
        self._trying = False  # a try is under way whose outcome is not counted yet
        self._tries = 0
        telemetry = meter.telemetry.current
        self._span = (
            telemetry.start(meter.endpoint, meter.provider, model)
            if telemetry is not None
            else None
        )

    def attempt_started(self) -> None:
        """A try begins; it is counted by :meth:`attempt_failed` or, if it goes on to serve
        the call, by :meth:`end` with the call's outcome."""
        self._trying = True
        self._tries += 1

    def attempt_failed(self, exc: BaseException) -> None:
        """The current try failed with ``exc`` (the call may try again, or move on)."""
        self._trying = False
        meter = self._meter
        label = outcome_of(exc)
        meter.attempts[label] += 1
        incident = incident_outcome(label, exc)
        meter.recent.attempts.add(trio.current_time(), incident)
        telemetry = meter.telemetry.current
        if telemetry is not None and self._span is not None:
            telemetry.attempt_failed(self._span, meter.endpoint, incident, exc)

    def retried(self) -> None:
        """The call tries again on this endpoint."""
        meter = self._meter
        meter.retries += 1
        meter.recent.retries.add(trio.current_time(), "retry")
        telemetry = meter.telemetry.current
        if telemetry is not None:
            telemetry.retried(meter.endpoint)

    def first_chunk(self) -> None:
        """The first chunk is ready: record the time to first token (once per call, however
        many attempts produced one)."""
        if not self._first:
            self._first = True
            self._meter.ttft.record(trio.current_time() - self._start)

    def end(
        self,
        exc: BaseException | None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        *,
        complete: bool = True,
    ) -> None:
        """The call ended with ``exc`` (``None``: normally). ``complete`` is false when the
        caller stopped before the end of the output (an early exit counts as ``cancelled``)."""
        meter = self._meter
        meter.in_flight -= 1
        if exc is None and not complete:
            label = "cancelled"
        elif exc is not None and complete and not isinstance(exc, RakkaError):
            # Everything was delivered; the caller's own exception afterwards is not the call's.
            label = outcome_of(None, finish_reason)
            exc = None
        else:
            label = outcome_of(exc, finish_reason)
        now = trio.current_time()
        recent = meter.recent
        incident = incident_outcome(label, exc)
        meter.requests[label] += 1
        recent.requests.add(now, incident)
        served = self._trying
        if served:
            self._trying = False
            meter.attempts[label] += 1
            recent.attempts.add(now, incident)
        if label in ("ok", "filtered"):
            meter.latency.record(now - self._start)
            recent.requests.add_latency(now, now - self._start)
        if usage is not None:
            meter.add_usage(self._model, usage)
        telemetry = meter.telemetry.current
        if telemetry is not None and self._span is not None:
            telemetry.end(
                self._span,
                endpoint=meter.endpoint,
                provider=meter.provider,
                model=self._model,
                outcome=incident,
                exc=exc,
                attempts=self._tries,
                seconds=now - self._start,
                usage=usage,
                served=served,
            )


class EndpointMeter:
    """The metrics and spend of one endpoint; the hook its calls report to."""

    __slots__ = (
        "attempts",
        "cost",
        "endpoint",
        "in_flight",
        "latency",
        "provider",
        "queue_wait",
        "recent",
        "requests",
        "retries",
        "telemetry",
        "tokens",
        "ttft",
    )

    def __init__(
        self,
        endpoint: str,
        cost: CostTracker,
        *,
        provider: str = "unknown",
        bucket_seconds: float = DEFAULT_BUCKET_SECONDS,
        telemetry: TelemetrySwitch | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.provider = provider
        self.cost = cost
        self.recent = EndpointRecent(bucket_seconds)
        self.telemetry = telemetry if telemetry is not None else TelemetrySwitch()
        self.requests: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.attempts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.retries = 0
        self.ttft = Latency()
        self.latency = Latency()
        self.queue_wait = Latency()
        self.tokens = [0, 0, 0, 0]  # input, output, cached, reasoning
        self.in_flight = 0

    def begin(self, model: str | None) -> CallRecord:
        """Start measuring a call on ``model``. Raises :class:`BudgetExceeded` (counted) when
        the endpoint's ``reject`` budget is exhausted."""
        try:
            self.cost.check()
        except BudgetExceeded:
            self.count("budget")
            raise
        self.in_flight += 1
        return CallRecord(self, model, trio.current_time())

    def count(self, label: str) -> None:
        """Count a request that ended before any call (``backpressure``, ``timeout``,
        ``cancelled``, ``budget``, ``circuit_open`` ...)."""
        self.requests[label] += 1
        incident = incident_outcome(label, None)
        self.recent.requests.add(trio.current_time(), incident)
        telemetry = self.telemetry.current
        if telemetry is not None:
            telemetry.requests.add(1, {"rakka.endpoint": self.endpoint, "rakka.outcome": incident})

    def add_usage(self, model: str | None, usage: Usage) -> None:
        """Add reported tokens and their cost."""
        tokens = self.tokens
        tokens[0] += usage.input_tokens
        tokens[1] += usage.output_tokens
        tokens[2] += usage.cached_tokens
        tokens[3] += usage.reasoning_tokens
        self.cost.charge(model, usage)

    def snapshot(
        self,
        *,
        queue_depth: int = 0,
        busy_workers: int = 0,
        workers: int = 0,
        max_concurrent: int = 0,
        limiter_utilization: float | None = None,
        breaker_state: str = "closed",
        limiter: Any = None,
    ) -> EndpointMetrics:
        """An immutable snapshot; the gauges come from the engine, limiter and breaker
        (``limiter``: the endpoint's ``LimiterStatistics``, split by limit in ``limits``)."""
        t = self.tokens
        return EndpointMetrics(
            endpoint=self.endpoint,
            requests=MappingProxyType(dict(self.requests)),
            attempts=MappingProxyType(dict(self.attempts)),
            retries=self.retries,
            ttft=self.ttft.summary(),
            latency=self.latency.summary(),
            queue_wait=self.queue_wait.summary(),
            tokens=TokenTotals(input=t[0], output=t[1], cached=t[2], reasoning=t[3]),
            cost=self.cost.total,
            budget=self.cost.statistics(),
            queue_depth=queue_depth,
            busy_workers=busy_workers,
            workers=workers,
            max_concurrent=max_concurrent,
            in_flight=self.in_flight,
            limiter_utilization=limiter_utilization,
            breaker_state=breaker_state,
            recent=self.recent.snapshot(trio.current_time()),
            limits=limiter_use(limiter),
        )


@attrs.frozen(kw_only=True)
class DeploymentStatistics:
    """A snapshot of one deployment: its endpoints, requests by final outcome, and fallbacks.

    ``fallback_routes`` counts moves by ``(from, to, cause)``: the endpoint the request left
    (or skipped although the strategy preferred it), the endpoint that took it, and the
    error class name that caused the move (``CircuitOpen``, ``RateLimited``, ``ServerError``
    ...; ``RateLimitExceeded`` when the endpoint's rate-limit key was paused or short, so it
    was skipped without sending). ``fallbacks`` sums them by ``"from:Cause"``.

    ``recent`` is what is happening now (rates by outcome, success rate, fallbacks per
    second, sparkline series) and ``serving`` how many of its endpoints can take calls now
    (breaker closed, half-open or disabled, rate-limit key not paused); ``None`` when not
    reported.
    """

    name: str
    endpoints: tuple[str, ...]
    requests: Mapping[str, int]
    fallbacks: Mapping[str, int]
    recovery_waits: int
    strategy: str = "ordered"
    fallback_routes: Mapping[tuple[str, str, str], int] = attrs.field(
        factory=lambda: MappingProxyType({})
    )
    recent: DeploymentActivity | None = None
    serving: int | None = None


class DeploymentMeter:
    """Counters of one deployment (final outcomes, fallbacks, waits for recovery)."""

    __slots__ = (
        "fallbacks",
        "name",
        "recent",
        "recovery_waits",
        "requests",
        "routes",
        "strategy",
        "telemetry",
    )

    def __init__(
        self,
        name: str,
        strategy: str = "ordered",
        *,
        bucket_seconds: float = DEFAULT_BUCKET_SECONDS,
        telemetry: TelemetrySwitch | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.requests: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.fallbacks: dict[str, int] = {}
        self.routes: dict[tuple[str, str, str], int] = {}
        self.recovery_waits = 0
        self.recent = DeploymentRecent(bucket_seconds)
        self.telemetry = telemetry if telemetry is not None else TelemetrySwitch()

    def count(self, label: str, exc: BaseException | None = None) -> None:
        """Count one request's final outcome ``label`` (``exc``: the error it ended with)."""
        self.requests[label] += 1
        self.recent.requests.add(trio.current_time(), incident_outcome(label, exc))

    def fallback(self, left: str, to: str, cause: str) -> None:
        """Count one move from endpoint ``left`` to ``to`` because of ``cause`` (an error
        class name)."""
        key = f"{left}:{cause}"
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
        route = (left, to, cause)
        self.routes[route] = self.routes.get(route, 0) + 1
        self.recent.fallback(trio.current_time(), route)
        telemetry = self.telemetry.current
        if telemetry is not None:
            telemetry.fallback(self.name, left, to, cause)

    def snapshot(self, endpoints: Iterable[str]) -> DeploymentStatistics:
        """An immutable snapshot."""
        return DeploymentStatistics(
            name=self.name,
            endpoints=tuple(endpoints),
            requests=MappingProxyType(dict(self.requests)),
            fallbacks=MappingProxyType(dict(self.fallbacks)),
            recovery_waits=self.recovery_waits,
            strategy=self.strategy,
            fallback_routes=MappingProxyType(dict(self.routes)),
            recent=self.recent.snapshot(trio.current_time()),
        )
