"""rakka-trio: Trio-native structured concurrency for calling remote LLM providers.

The public API lives here; every module behind it is private. See README.md and docs/.

The names come in groups:

* **supervisor** — :func:`open_supervisor` / :func:`run_supervisor`, :class:`Supervisor`,
  its endpoints and statistics;
* **configuration** — the frozen config classes and :func:`load_config`;
* **credentials** — :class:`Secret` and the credential sources;
* **calls** — :class:`ChatRequest`, streamed :class:`StreamChunk`, :class:`Completion`,
  sessions;
* **providers** — the plug-in interface: :class:`Provider`, :func:`register_provider`;
* **breaker** — :class:`BreakerHandle` and its states;
* **retries** — :class:`Retrier` and the retry budget;
* **rate limits** — :class:`LimiterHandle`, :class:`Cost`, reservations and statistics;
* **engine** — queued submissions, priorities, deployments;
* **accounting** — prices, budgets, metrics and :func:`prometheus_text`;
* **events** — what subscribers receive;
* **control plane** — :func:`serve_control` and :func:`open_control_client`;
* **shutdown** — :func:`shutdown_on_signals` for a graceful stop on SIGTERM/SIGINT;
* **fleet** — :class:`FleetConfig`, ``sup.fleet`` (:class:`Fleet`), :func:`open_fleet`, the
  fleet view and command results, :func:`serve_fleet_control`;
* **SSE** — the spec-exact :class:`SSEDecoder`;
* **errors** — one hierarchy under :class:`RakkaError`.
"""

import logging as _logging

from ._accounting import (
    DEFAULT_PRICES,
    OUTCOMES,
    BudgetAlert,
    BudgetStatistics,
    DeploymentStatistics,
    EndpointMetrics,
    LatencySummary,
    PriceTable,
    PrometheusCollector,
    TokenTotals,
    prometheus_text,
    usage_cost,
)
from ._breaker import BreakerHandle, BreakerStatistics
from ._call import ChunkStream, Session, SessionStatistics
from ._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from ._config import (
    BreakerConfig,
    BudgetConfig,
    DeploymentConfig,
    EndpointConfig,
    EngineConfig,
    FleetConfig,
    ModelPrice,
    RateLimits,
    RetryPolicy,
    SupervisorConfig,
    Timeouts,
    load_config,
)
from ._control import (
    ControlAuthError,
    ControlClient,
    ControlCommandError,
    ControlConnectionError,
    ControlError,
    ControlServer,
    ControlServerStatistics,
    ControlUnknownEndpoint,
    open_control_client,
    serve_control,
    serve_fleet_control,
)
from ._credentials import (
    CallableCredential,
    Credential,
    EnvCredential,
    FileCredential,
    Secret,
    StaticCredential,
)
from ._engine import Deployment, EngineStatistics, Outcome, Priority, Submission
from ._errors import (
    Backpressure,
    BadRequest,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    ContentFiltered,
    ContextLengthExceeded,
    EventTooLarge,
    Forbidden,
    LimiterUnavailable,
    NetworkError,
    NotFound,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RakkaError,
    RateLimited,
    RateLimitExceeded,
    ServerError,
    StreamError,
    StreamTruncated,
    SupervisorError,
    Timeout,
    Unauthorized,
    UnknownEndpoint,
    parse_retry_after,
)
from ._events import (
    BreakerState,
    Command,
    EndpointAdded,
    EndpointRemoved,
    Event,
    Lagged,
    ProbeLimitReached,
    Stats,
    Subscription,
    TaskRestarted,
    Transition,
)
from ._extras import MissingExtra
from ._fleet import (
    Fleet,
    FleetCommandResult,
    FleetEndpoint,
    FleetError,
    FleetEvent,
    FleetLinkChanged,
    FleetLinkStatistics,
    FleetNode,
    FleetNodeEndpoint,
    FleetOverride,
    FleetUnavailable,
    FleetView,
    InvalidFleetCommand,
    open_fleet,
)
from ._limits import (
    Cost,
    KeyStatistics,
    LimiterFallback,
    LimiterHandle,
    LimiterPaused,
    LimiterStateLost,
    LimiterStatistics,
    LimitStatistics,
    Reservation,
    model_family,
)
from ._providers import (
    ErrorClassifier,
    HttpCall,
    Provider,
    RateLimitHint,
    StreamAdapter,
    classify_http_status,
    provider_names,
    register_provider,
)
from ._request import ChatRequest, Completion, ToolCall
from ._retry import Retrier, RetryBudget, RetryDecision
from ._signals import SignalShutdown, shutdown_on_signals
from ._sse import SSEDecoder, SSEEvent
from ._supervisor import (
    Endpoint,
    EndpointStatistics,
    Supervisor,
    SupervisorStatistics,
    open_supervisor,
    run_supervisor,
)
from ._version import __version__

# A library never configures logging for its users; this keeps Python's last-resort handler
# from printing our warnings when the application has not set logging up.
_logging.getLogger("rakka_trio").addHandler(_logging.NullHandler())

__all__ = [
    "DEFAULT_PRICES",
    "OUTCOMES",
    "Backpressure",
    "BadRequest",
    "BreakerConfig",
    "BreakerHandle",
    "BreakerState",
    "BreakerStatistics",
    "BudgetAlert",
    "BudgetConfig",
    "BudgetExceeded",
    "BudgetStatistics",
    "CallableCredential",
    "ChatRequest",
    "ChunkStream",
    "CircuitOpen",
    "Citation",
    "Command",
    "Completion",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "ControlAuthError",
    "ControlClient",
    "ControlCommandError",
    "ControlConnectionError",
    "ControlError",
    "ControlServer",
    "ControlServerStatistics",
    "ControlUnknownEndpoint",
    "Cost",
    "Credential",
    "Deployment",
    "DeploymentConfig",
    "DeploymentStatistics",
    "Endpoint",
    "EndpointAdded",
    "EndpointConfig",
    "EndpointMetrics",
    "EndpointRemoved",
    "EndpointStatistics",
    "EngineConfig",
    "EngineStatistics",
    "EnvCredential",
    "ErrorClassifier",
    "Event",
    "EventTooLarge",
    "FileCredential",
    "Fleet",
    "FleetCommandResult",
    "FleetConfig",
    "FleetEndpoint",
    "FleetError",
    "FleetEvent",
    "FleetLinkChanged",
    "FleetLinkStatistics",
    "FleetNode",
    "FleetNodeEndpoint",
    "FleetOverride",
    "FleetUnavailable",
    "FleetView",
    "Forbidden",
    "HttpCall",
    "InvalidFleetCommand",
    "KeyStatistics",
    "Lagged",
    "LatencySummary",
    "LimitStatistics",
    "LimiterFallback",
    "LimiterHandle",
    "LimiterPaused",
    "LimiterStateLost",
    "LimiterStatistics",
    "LimiterUnavailable",
    "MissingExtra",
    "ModelPrice",
    "NetworkError",
    "NotFound",
    "Outcome",
    "Overloaded",
    "PriceTable",
    "Priority",
    "ProbeLimitReached",
    "PrometheusCollector",
    "Provider",
    "ProviderError",
    "QuotaExhausted",
    "RakkaError",
    "RateLimitExceeded",
    "RateLimitHint",
    "RateLimited",
    "RateLimits",
    "Reservation",
    "Retrier",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "SSEDecoder",
    "SSEEvent",
    "Secret",
    "ServerError",
    "Session",
    "SessionStatistics",
    "SignalShutdown",
    "StaticCredential",
    "Stats",
    "StreamAdapter",
    "StreamChunk",
    "StreamError",
    "StreamTruncated",
    "Submission",
    "Subscription",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorError",
    "SupervisorStatistics",
    "TaskRestarted",
    "Timeout",
    "Timeouts",
    "TokenTotals",
    "ToolCall",
    "ToolCallDelta",
    "Transition",
    "Unauthorized",
    "UnknownEndpoint",
    "Usage",
    "__version__",
    "classify_http_status",
    "load_config",
    "model_family",
    "open_control_client",
    "open_fleet",
    "open_supervisor",
    "parse_retry_after",
    "prometheus_text",
    "provider_names",
    "register_provider",
    "run_supervisor",
    "serve_control",
    "serve_fleet_control",
    "shutdown_on_signals",
    "usage_cost",
]
