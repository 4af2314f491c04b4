"""Every figure of a supervisor in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from ._metrics import (
    LATENCY_BUCKETS,
    RECENT_SAMPLES,
    DeploymentStatistics,
    EndpointMetrics,
    LatencySummary,
)

# --- Prometheus text exposition -------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


_BOUNDS = (*(_number(b) for b in LATENCY_BUCKETS), "+Inf")
_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class _Families:
    """Samples grouped by metric family, rendered with each family's HELP/TYPE header first
    (the format requires a family's samples to be contiguous)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(
        self,
        name: str,
        kind: str,
        help_text: str,
        labels: Mapping[str, str],
        value: float,
        suffix: str = "",
    ) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = (kind, help_text, [])
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        family[2].append(f"{name}{suffix}{{{rendered}}} {_number(value)}")

    def histogram(
        self, name: str, help_text: str, labels: Mapping[str, str], summary: LatencySummary
    ) -> None:
        for bound, count in zip(_BOUNDS, summary.buckets, strict=True):
            self.add(name, "histogram", help_text, {**labels, "le": bound}, count, "_bucket")
        self.add(name, "histogram", help_text, labels, summary.total, "_sum")
        self.add(name, "histogram", help_text, labels, summary.count, "_count")

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


class _StatisticsSnapshot(Protocol):
    @property
    def endpoints(self) -> Mapping[str, Any]: ...


class _HasStatistics(Protocol):
    def statistics(self) -> _StatisticsSnapshot: ...


def prometheus_text(source: _HasStatistics | _StatisticsSnapshot) -> str:
    """Every endpoint's and deployment's metrics in the Prometheus text format 0.0.4.

    ``source`` is a supervisor or one of its ``statistics()`` snapshots. Serve the text from
    any HTTP handler with ``Content-Type: text/plain; version=0.0.4``. Metric names start
    with ``rakka_``; endpoints and deployments are labels.
    """
    stats = source.statistics() if hasattr(source, "statistics") else source
    out = _Families()
    for name, ep in stats.endpoints.items():
        base = {"endpoint": name}
        for state in _BREAKER_STATES:
            out.add(
                "rakka_breaker_state",
                "gauge",
                "1 for the breaker's current state, else 0.",
                {**base, "state": state},
                1 if ep.breaker.state.value == state else 0,
            )
        out.add(
            "rakka_breaker_trips_total",
            "counter",
            "Times the breaker opened.",
            base,
            ep.breaker.trips,
        )
        m: EndpointMetrics | None = getattr(ep, "metrics", None)
        if m is None:
            continue
        for outcome, count in m.requests.items():
            out.add(
                "rakka_requests_total",
                "counter",
                "Requests by final outcome on the endpoint.",
                {**base, "outcome": outcome},
                count,
            )
        for outcome, count in m.attempts.items():
            out.add(
                "rakka_attempts_total",
                "counter",
                "Tries by their own outcome (a retried request counts each try).",
                {**base, "outcome": outcome},
                count,
            )
        out.add(
            "rakka_retries_total",
            "counter",
            "Tries repeated on the same endpoint.",
            base,
            m.retries,
        )
        for kind, value in (
            ("input", m.tokens.input),
            ("output", m.tokens.output),
            ("cached", m.tokens.cached),
            ("reasoning", m.tokens.reasoning),
        ):
            out.add(
                "rakka_tokens_total",
                "counter",
                "Tokens reported by the provider (cached within input, reasoning within output).",
                {**base, "kind": kind},
                value,
            )
        out.add("rakka_cost_usd_total", "counter", "Spend in USD since start.", base, m.cost)
        for window, spend in (("hour", m.budget.hour), ("day", m.budget.day)):
            out.add(
                "rakka_spend_usd",
                "gauge",
                "Spend in USD over the rolling window.",
                {**base, "window": window},
                spend,
            )
        gauges: tuple[tuple[str, str, float], ...] = (
            ("rakka_queue_depth", "Requests waiting in the engine queue.", m.queue_depth),
            ("rakka_workers_busy", "Engine workers serving a request.", m.busy_workers),
            ("rakka_workers", "Engine workers running.", m.workers),
            (
                "rakka_workers_limit",
                "Engine worker limit now (halved when throttled).",
                m.max_concurrent,
            ),
            ("rakka_in_flight", "Calls in progress (engine and direct).", m.in_flight),
        )
        for metric, help_text, gauge in gauges:
            out.add(metric, "gauge", help_text, base, gauge)
        if m.limiter_utilization is not None:
            out.add(
                "rakka_limiter_utilization",
                "gauge",
                "Highest rate-limit utilisation (0..1).",
                base,
                m.limiter_utilization,
            )
        if m.limits is not None:
            for lim in m.limits.limits:
                labels = {**base, "limit": lim.name}
                out.add(
                    "rakka_limiter_use",
                    "gauge",
                    "Share of each rate limit in use now (0..1).",
                    labels,
                    lim.used,
                )
                out.add(
                    "rakka_limiter_limit",
                    "gauge",
                    "Each rate limit in force: per minute, or calls for concurrency "
                    "(below the configured one when the provider's headers lowered it).",
                    labels,
                    lim.limit,
                )
                out.add(
                    "rakka_limiter_limit_configured",
                    "gauge",
                    "Each rate limit as configured.",
                    labels,
                    lim.configured,
                )
            out.add(
                "rakka_limiter_paused",
                "gauge",
                "1 while a provider 429 pauses the rate-limit key, else 0.",
                base,
                1 if m.limits.paused_until is not None else 0,
            )
            out.add(
                "rakka_limiter_waiting",
                "gauge",
                "Requests waiting in line for rate-limit budget.",
                base,
                m.limits.waiting,
            )
        for metric, summary, help_text in (
            ("rakka_ttft_seconds", m.ttft, "Time from the call's start to its first chunk."),
            ("rakka_request_duration_seconds", m.latency, "Duration of completed calls."),
            ("rakka_queue_wait_seconds", m.queue_wait, "Time spent in the engine queue."),
        ):
            out.histogram(metric, help_text, base, summary)
        for metric, summary in (
            ("rakka_ttft_recent_seconds", m.ttft),
            ("rakka_request_duration_recent_seconds", m.latency),
        ):
            quantiles = (("0.5", summary.p50), ("0.95", summary.p95), ("0.99", summary.p99))
            for q, quantile in quantiles:
                if quantile is not None:
                    out.add(
                        metric,
                        "gauge",
                        f"Percentile of the last {RECENT_SAMPLES} samples.",
                        {**base, "quantile": q},
                        quantile,
                    )
    deployments: Mapping[str, DeploymentStatistics] = getattr(stats, "deployments", {})
    for name, dep in deployments.items():
        base = {"deployment": name}
        for outcome, count in dep.requests.items():
            out.add(
                "rakka_deployment_requests_total",
                "counter",
                "Deployment requests by final outcome.",
                {**base, "outcome": outcome},
                count,
            )
        for (left, to, reason), count in dep.fallback_routes.items():
            out.add(
                "rakka_deployment_fallbacks_total",
                "counter",
                "Moves to another endpoint, by the endpoint left, the one taken and the cause.",
                {**base, "endpoint": left, "to": to, "reason": reason},
                count,
            )
        out.add(
            "rakka_deployment_endpoints",
            "gauge",
            "Endpoints in the deployment.",
            base,
            len(dep.endpoints),
        )
        if dep.serving is not None:
            out.add(
                "rakka_deployment_endpoints_serving",
                "gauge",
                "Endpoints of the deployment that can take calls now.",
                base,
                dep.serving,
            )
        out.add(
            "rakka_deployment_recovery_waits_total",
            "counter",
            "Requests that waited for a breaker to recover.",
            base,
            dep.recovery_waits,
        )
    return out.render()
