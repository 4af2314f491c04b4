"""Accounting: prices and cost budgets, per-endpoint metrics, and their Prometheus exposition.

``_cost`` holds the price table and rolling budgets, ``_metrics`` the meters every call goes
through and the frozen snapshots they produce, ``_prometheus`` renders those snapshots.
``_rolling`` is the rolling-window structure and ``_recent`` the incident view built on it
(rates by outcome now, error and success rates, sparkline series, limiter use by limit);
``_otel`` sends spans and metrics through ``opentelemetry-api`` when it is installed.
"""

from ._collector import PrometheusCollector
from ._cost import (
    DEFAULT_PRICES,
    BudgetAlert,
    BudgetStatistics,
    CostTracker,
    PriceTable,
    usage_cost,
)
from ._metrics import (
    LATENCY_BUCKETS,
    OUTCOMES,
    CallRecord,
    DeploymentMeter,
    DeploymentStatistics,
    EndpointMeter,
    EndpointMetrics,
    Latency,
    LatencySummary,
    TokenTotals,
    outcome_of,
)
from ._otel import Telemetry, TelemetrySwitch, instrument_opentelemetry
from ._prometheus import prometheus_text
from ._recent import (
    INCIDENT_OUTCOMES,
    DeploymentActivity,
    LimiterUse,
    LimitUse,
    RecentActivity,
    can_serve,
    incident_outcome,
    limiter_use,
)

__all__ = [
    "DEFAULT_PRICES",
    "INCIDENT_OUTCOMES",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "BudgetAlert",
    "BudgetStatistics",
    "CallRecord",
    "CostTracker",
    "DeploymentActivity",
    "DeploymentMeter",
    "DeploymentStatistics",
    "EndpointMeter",
    "EndpointMetrics",
    "Latency",
    "LatencySummary",
    "LimitUse",
    "LimiterUse",
    "PriceTable",
    "PrometheusCollector",
    "RecentActivity",
    "Telemetry",
    "TelemetrySwitch",
    "TokenTotals",
    "can_serve",
    "incident_outcome",
    "instrument_opentelemetry",
    "limiter_use",
    "outcome_of",
    "prometheus_text",
    "usage_cost",
]
