"""Accounting: prices and cost budgets, per-endpoint metrics, and their Prometheus exposition.

``_cost`` holds the price table and rolling budgets, ``_metrics`` the meters every call goes
through and the frozen snapshots they produce, ``_prometheus`` renders those snapshots.
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
from ._prometheus import prometheus_text

__all__ = [
    "DEFAULT_PRICES",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "BudgetAlert",
    "BudgetStatistics",
    "CallRecord",
    "CostTracker",
    "DeploymentMeter",
    "DeploymentStatistics",
    "EndpointMeter",
    "EndpointMetrics",
    "Latency",
    "LatencySummary",
    "PriceTable",
    "PrometheusCollector",
    "TokenTotals",
    "outcome_of",
    "prometheus_text",
    "usage_cost",
]
