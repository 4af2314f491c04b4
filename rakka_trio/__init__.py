"""rakka-trio: Trio-native structured concurrency for calling remote LLM providers.

The public API lives here; every module behind it is private. See README.md and DESIGN.md §3.
"""

import logging as _logging

from ._breaker import BreakerHandle, BreakerStatistics
from ._config import (
    BreakerConfig,
    DeploymentConfig,
    EndpointConfig,
    RateLimits,
    RetryPolicy,
    SupervisorConfig,
    Timeouts,
    load_config,
)
from ._credentials import (
    CallableCredential,
    Credential,
    EnvCredential,
    FileCredential,
    Secret,
    StaticCredential,
)
from ._endpoint import ChunkStream
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
    NetworkError,
    NotFound,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RakkaError,
    RateLimited,
    ServerError,
    StreamError,
    StreamTruncated,
    SupervisorError,
    Timeout,
    Unauthorized,
    UnknownEndpoint,
    classify_http_status,
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
from ._request import ChatRequest, Completion, ToolCall
from ._retry import Retrier, RetryBudget, RetryDecision
from ._session import Session, SessionStatistics
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
    "Backpressure",
    "BadRequest",
    "BreakerConfig",
    "BreakerHandle",
    "BreakerState",
    "BreakerStatistics",
    "BudgetExceeded",
    "CallableCredential",
    "ChatRequest",
    "ChunkStream",
    "CircuitOpen",
    "Command",
    "Completion",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "Credential",
    "DeploymentConfig",
    "Endpoint",
    "EndpointAdded",
    "EndpointConfig",
    "EndpointRemoved",
    "EndpointStatistics",
    "EnvCredential",
    "Event",
    "EventTooLarge",
    "FileCredential",
    "Forbidden",
    "Lagged",
    "NetworkError",
    "NotFound",
    "Overloaded",
    "ProbeLimitReached",
    "ProviderError",
    "QuotaExhausted",
    "RakkaError",
    "RateLimited",
    "RateLimits",
    "Retrier",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "Session",
    "SessionStatistics",
    "StaticCredential",
    "Stats",
    "StreamError",
    "StreamTruncated",
    "Subscription",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorError",
    "SupervisorStatistics",
    "TaskRestarted",
    "Timeout",
    "Timeouts",
    "ToolCall",
    "Transition",
    "Unauthorized",
    "UnknownEndpoint",
    "__version__",
    "classify_http_status",
    "load_config",
    "open_supervisor",
    "parse_retry_after",
    "run_supervisor",
]

# --- streaming: SSE decoder and provider stream adapters (issue 3) ---------------------------
# (names are appended to __all__ below this line by the streaming modules' integration)
from ._chunks import Citation, StreamChunk, ToolCallDelta, Usage  # noqa: E402
from ._sse import SSEDecoder, SSEEvent  # noqa: E402

__all__ += ["Citation", "SSEDecoder", "SSEEvent", "StreamChunk", "ToolCallDelta", "Usage"]

# --- control plane: websocket server, client and errors (issue 6) ----------------------------
from ._control import (  # noqa: E402  # noqa: E402
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
)

__all__ += [
    "ControlAuthError",
    "ControlClient",
    "ControlCommandError",
    "ControlConnectionError",
    "ControlError",
    "ControlServer",
    "ControlServerStatistics",
    "ControlUnknownEndpoint",
    "open_control_client",
    "serve_control",
]

# --- rate limiting: local GCRA, approximate (Redis escrow) and strict modes (issue 9) ---------
from ._errors import LimiterUnavailable, RateLimitExceeded  # noqa: E402
from ._limits import (  # noqa: E402
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

__all__ += [
    "Cost",
    "KeyStatistics",
    "LimitStatistics",
    "LimiterFallback",
    "LimiterHandle",
    "LimiterPaused",
    "LimiterStateLost",
    "LimiterStatistics",
    "LimiterUnavailable",
    "RateLimitExceeded",
    "Reservation",
    "model_family",
]

# --- engine: queues, workers, fallback chains, cost budgets and metrics (issue 5) -------------
from ._config import BudgetConfig, EngineConfig, ModelPrice  # noqa: E402
from ._cost import (  # noqa: E402
    DEFAULT_PRICES,
    BudgetAlert,
    BudgetStatistics,
    PriceTable,
    usage_cost,
)
from ._engine import (  # noqa: E402
    Deployment,
    EngineStatistics,
    Outcome,
    Priority,
    Submission,
)
from ._metrics import (  # noqa: E402
    OUTCOMES,
    DeploymentStatistics,
    EndpointMetrics,
    LatencySummary,
    TokenTotals,
    prometheus_text,
)

__all__ += [
    "DEFAULT_PRICES",
    "OUTCOMES",
    "BudgetAlert",
    "BudgetConfig",
    "BudgetStatistics",
    "Deployment",
    "DeploymentStatistics",
    "EndpointMetrics",
    "EngineConfig",
    "EngineStatistics",
    "LatencySummary",
    "ModelPrice",
    "Outcome",
    "PriceTable",
    "Priority",
    "Submission",
    "TokenTotals",
    "prometheus_text",
    "usage_cost",
]
