"""Configuration: frozen, keyword-only, validated attrs classes.

Constructing one with a bad value raises :class:`~rakka_trio.ConfigError` naming the field.
Loading from a dict or TOML (:meth:`SupervisorConfig.from_dict`, :func:`load_config`) goes through
the private cattrs converter in ``_convert.py``, which reports *every* bad field path at once.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .._credentials import Credential
from .._errors import ConfigError
from .._providers import get_provider, provider_names
from ._deployment import DeploymentConfig
from ._fleet import FleetConfig, fleet_config
from ._validators import (
    _as_dict,
    _as_list,
    _bool,
    _choice,
    _credential,
    _headers,
    _instance,
    _name,
    _number,
    _optional_name,
    _optional_str,
    _url,
)

__all__ = [
    "BreakerConfig",
    "BudgetConfig",
    "DeploymentConfig",
    "EndpointConfig",
    "EngineConfig",
    "ModelPrice",
    "RateLimits",
    "RetryPolicy",
    "SupervisorConfig",
    "Timeouts",
    "load_config",
]

Provider = str  # a registered provider name (see rakka_trio.provider_names())
Jitter = Literal["none", "full", "equal", "decorrelated"]
LimiterMode = Literal["local", "approximate", "strict"]
RedisFailurePolicy = Literal["fail_open", "fail_closed", "local_fallback"]
WindowType = Literal["count", "time"]
CapacityPolicy = Literal["reject", "queue", "fallback"]
BudgetAction = Literal["reject", "warn", "throttle"]

# --- config classes -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BreakerConfig:
    """Circuit-breaker rules for one endpoint (see README "Concepts").

    It trips on ``failure_threshold`` consecutive failures, or when the failure rate over the
    sliding window reaches ``failure_rate_threshold`` once ``minimum_calls`` were seen, or when
    the slow-call rate reaches ``slow_call_rate_threshold`` (calls slower than
    ``slow_call_duration`` seconds). It stays open ``open_duration`` seconds, multiplied by
    ``open_duration_multiplier`` on each consecutive trip up to ``open_duration_max``; a server's
    Retry-After on a 503/overload may lengthen it up to that cap. Half-open admits at most
    ``half_open_max_probes`` concurrent probes; ``success_threshold`` successes close it, any
    counted failure re-opens it. A probe that never reports loses its permit after
    ``probe_timeout`` seconds.
    """

    failure_threshold: int = attrs.field(default=5, validator=_number(ge=1, integer=True))
    failure_rate_threshold: float | None = attrs.field(
        default=0.5, validator=_number(gt=0, le=1, optional=True)
    )
    minimum_calls: int = attrs.field(default=20, validator=_number(ge=1, integer=True))
    window_type: WindowType = attrs.field(default="count", validator=_choice("count", "time"))
    window_size: int = attrs.field(default=100, validator=_number(ge=1, integer=True))
    window_duration: float = attrs.field(default=60.0, validator=_number(gt=0))
    slow_call_duration: float | None = attrs.field(
        default=None, validator=_number(gt=0, optional=True)
    )
    slow_call_rate_threshold: float | None = attrs.field(
        default=None, validator=_number(gt=0, le=1, optional=True)
    )
    open_duration: float = attrs.field(default=30.0, validator=_number(gt=0))
    open_duration_max: float = attrs.field(default=300.0, validator=_number(gt=0))
    open_duration_multiplier: float = attrs.field(default=2.0, validator=_number(ge=1))
    honor_retry_after: bool = attrs.field(default=True, validator=_bool)
    half_open_max_probes: int = attrs.field(default=1, validator=_number(ge=1, integer=True))
    success_threshold: int = attrs.field(default=1, validator=_number(ge=1, integer=True))
    probe_timeout: float = attrs.field(default=120.0, validator=_number(gt=0))
    count_unknown_errors: bool = attrs.field(default=True, validator=_bool)

    def __attrs_post_init__(self) -> None:
        errors = []
        if self.open_duration_max < self.open_duration:
            errors.append(("open_duration_max", "must be >= open_duration"))
        if self.slow_call_rate_threshold is not None and self.slow_call_duration is None:
            errors.append(
                ("slow_call_duration", "is required when slow_call_rate_threshold is set")
            )
        if errors:
            raise ConfigError(errors)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed calls are retried (see README "Concepts").

    Backoff starts at ``initial_backoff`` and grows by ``multiplier`` up to ``max_backoff``,
    with ``jitter``. ``deadline`` bounds the whole call including waits; server hints
    (``retry-after-ms`` > ``Retry-After``) are honoured up to ``max_server_wait`` (longer asks
    fail fast). ``per_error`` caps retries per error class name (e.g. ``{"Timeout": 1}``).
    ``budget_ratio`` limits retries to that fraction of recent requests per endpoint, with
    ``budget_min_retries_per_second`` always allowed.
    """

    max_retries: int = attrs.field(default=3, validator=_number(ge=0, integer=True))
    initial_backoff: float = attrs.field(default=1.0, validator=_number(ge=0))
    max_backoff: float = attrs.field(default=60.0, validator=_number(ge=0))
    multiplier: float = attrs.field(default=2.0, validator=_number(ge=1))
    jitter: Jitter = attrs.field(
        default="equal", validator=_choice("none", "full", "equal", "decorrelated")
    )
    deadline: float | None = attrs.field(default=None, validator=_number(gt=0, optional=True))
    max_server_wait: float = attrs.field(default=60.0, validator=_number(ge=0))
    respect_should_retry: bool = attrs.field(default=True, validator=_bool)
    per_error: Mapping[str, int] = attrs.field(factory=dict, converter=_as_dict)
    budget_ratio: float = attrs.field(default=0.2, validator=_number(ge=0, le=1))
    budget_min_retries_per_second: float = attrs.field(default=10.0, validator=_number(ge=0))

    def __attrs_post_init__(self) -> None:
        errors = []
        if self.max_backoff < self.initial_backoff:
            errors.append(("max_backoff", "must be >= initial_backoff"))
        from .. import _errors  # the names users may write in per_error

        for key, value in self.per_error.items():
            cls = getattr(_errors, key, None)
            if not (isinstance(cls, type) and issubclass(cls, _errors.RakkaError)):
                errors.append((f"per_error.{key}", "is not a rakka-trio error class name"))
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                errors.append((f"per_error.{key}", f"must be an integer >= 0, got {value!r}"))
        if errors:
            raise ConfigError(errors)


@attrs.frozen(kw_only=True)
class RateLimits:
    """Provider budgets for one endpoint's key; ``None`` means unlimited (docs/rate-limiting.md).

    A limit of L per minute refills continuously at L/60 per second. A request-count limit
    holds at most ten seconds' worth (burst ``ceil(L/6)``, at least 1), so any 60 s window
    admits at most ``L + burst``; token limits hold one minute's worth so one large request
    fits. ``*_burst`` sets another burst (a cost above the burst fails at once).
    ``max_wait`` bounds how long a call waits for budget (``None``: no bound); past it the call
    fails with a local :class:`~rakka_trio.LocalRateLimited` (a :class:`~rakka_trio.RateLimited`).
    ``mode`` is ``local`` (in-process), ``approximate`` (shared via Redis, local-speed checks)
    or ``strict`` (one atomic Redis call per admission); ``redis_failure_policy`` says what
    happens when Redis is unreachable, and ``expected_nodes`` is the fleet size a node assumes
    for its share until it has reached Redis once. ``adaptive`` lets provider rate-limit
    headers lower the limits (never above these) and 429s pause the key for at most
    ``max_pause`` seconds (0: no pause); ``adaptive=False`` ignores both.
    Shared modes sync every ``sync_interval`` seconds, lease about ``lease_seconds`` of this
    node's demand at a time (approximate), and forget a node silent for ``node_ttl`` seconds
    (returning its concurrency permits). A key unused for ``key_idle_timeout`` seconds with
    nothing in flight is dropped (``None``: never). ``server_scope`` replaces the base URL's
    ``host[:port]`` in the key: endpoints (or nodes) that reach one provider budget through
    different URLs share it when they name the same scope. See docs/rate-limiting.md.
    """

    requests_per_minute: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    tokens_per_minute: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    input_tokens_per_minute: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    output_tokens_per_minute: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    max_concurrent: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    mode: LimiterMode = attrs.field(
        default="local", validator=_choice("local", "approximate", "strict")
    )
    redis_failure_policy: RedisFailurePolicy = attrs.field(
        default="local_fallback", validator=_choice("fail_open", "fail_closed", "local_fallback")
    )
    requests_burst: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    tokens_burst: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    input_tokens_burst: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    output_tokens_burst: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    adaptive: bool = attrs.field(default=True, validator=_bool)
    max_pause: float = attrs.field(default=60.0, validator=_number(ge=0))
    max_wait: float | None = attrs.field(default=30.0, validator=_number(ge=0, optional=True))
    sync_interval: float = attrs.field(default=1.0, validator=_number(gt=0))
    lease_seconds: float = attrs.field(default=2.0, validator=_number(gt=0))
    node_ttl: float = attrs.field(default=10.0, validator=_number(gt=0))
    expected_nodes: int = attrs.field(default=1, validator=_number(ge=1, integer=True))
    key_idle_timeout: float | None = attrs.field(
        default=600.0, validator=_number(gt=0, optional=True)
    )
    server_scope: str | None = attrs.field(default=None, validator=_optional_name)

    def __attrs_post_init__(self) -> None:
        errors = []
        for kind in ("requests", "tokens", "input_tokens", "output_tokens"):
            if (
                getattr(self, f"{kind}_burst") is not None
                and getattr(self, f"{kind}_per_minute") is None
            ):
                errors.append((f"{kind}_burst", f"needs {kind}_per_minute"))
        if self.node_ttl < 2 * self.sync_interval:
            errors.append(("node_ttl", "must be at least twice sync_interval"))
        if errors:
            raise ConfigError(errors)


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-call timeouts in seconds: TCP/TLS ``connect``, ``first_byte`` after sending,
    ``read_gap`` between two reads of a stream, optional ``total`` for the whole call, and
    ``pool`` for waiting on a pooled connection."""

    connect: float = attrs.field(default=10.0, validator=_number(gt=0))
    first_byte: float = attrs.field(default=60.0, validator=_number(gt=0))
    read_gap: float = attrs.field(default=60.0, validator=_number(gt=0))
    total: float | None = attrs.field(default=None, validator=_number(gt=0, optional=True))
    pool: float = attrs.field(default=10.0, validator=_number(gt=0))


@attrs.frozen(kw_only=True)
class EngineConfig:
    """The queued engine path of one endpoint: ``endpoint.submit`` and deployments (docs/engine.md).

    A bounded priority queue of at most ``queue_size`` waiting requests feeds up to
    ``max_concurrent`` workers (default: ``limits.max_concurrent`` when set, else 64; workers
    start on demand and leave after ``idle_timeout`` idle seconds). ``on_full`` says what a
    request meets when every worker is busy and the queue is full: ``reject`` raises
    :class:`~rakka_trio.Backpressure`, ``queue`` waits up to ``queue_timeout`` seconds for room
    (then ``Backpressure``), ``fallback`` moves on to the next endpoint of a deployment's chain
    (``Backpressure`` when there is none). ``stream_buffer`` bounds the chunks a worker may run
    ahead of a slow reader.
    """

    max_concurrent: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    queue_size: int = attrs.field(default=1000, validator=_number(ge=0, integer=True))
    on_full: CapacityPolicy = attrs.field(
        default="fallback", validator=_choice("reject", "queue", "fallback")
    )
    queue_timeout: float = attrs.field(default=30.0, validator=_number(gt=0))
    stream_buffer: int = attrs.field(default=64, validator=_number(ge=1, integer=True))
    idle_timeout: float = attrs.field(default=60.0, validator=_number(gt=0))


@attrs.frozen(kw_only=True)
class ModelPrice:
    """A model's price in USD per million tokens.

    ``input`` and ``output`` are the list prices; ``cached_input`` is the price of input tokens
    served from a prompt cache and ``cache_write`` of those written to it (Anthropic); both
    default to ``input``. Reasoning tokens are billed as output.
    """

    input: float = attrs.field(validator=_number(ge=0))
    output: float = attrs.field(validator=_number(ge=0))
    cached_input: float | None = attrs.field(default=None, validator=_number(ge=0, optional=True))
    cache_write: float | None = attrs.field(default=None, validator=_number(ge=0, optional=True))


def _prices(value: Any) -> dict[str, ModelPrice]:
    """Accept ``{model: ModelPrice | {input, output, ...}}`` (as written in TOML)."""
    if not isinstance(value, Mapping):
        raise ConfigError([("$", f"must be a table of model names, got {type(value).__name__}")])
    out: dict[str, ModelPrice] = {}
    errors: list[tuple[str, str]] = []
    for model, price in value.items():
        if not isinstance(model, str) or not model:
            errors.append(("$", f"model names must be non-empty strings, got {model!r}"))
            continue
        if isinstance(price, ModelPrice):
            out[model] = price
        elif isinstance(price, Mapping):
            fields = attrs.fields_dict(ModelPrice)
            unknown = [k for k in price if k not in fields]
            missing = [k for k in ("input", "output") if k not in price]
            errors.extend((f"{model}.{k}", "unknown field") for k in unknown)
            errors.extend((f"{model}.{k}", "is required") for k in missing)
            if not unknown and not missing:
                try:
                    out[model] = ModelPrice(**price)
                except ConfigError as exc:
                    errors.extend((f"{model}.{path}", msg) for path, msg in exc.errors)
        else:
            errors.append((model, f"must be a price table, got {type(price).__name__}"))
    if errors:
        raise ConfigError(errors)
    return out


@attrs.frozen(kw_only=True)
class BudgetConfig:
    """Spend limits of one endpoint in USD over a rolling ``hourly`` and ``daily`` window.

    Spend is priced from the reported token usage (see ``prices``). When a limit is reached,
    ``on_exceeded`` decides: ``reject`` refuses new calls with
    :class:`~rakka_trio.BudgetExceeded` (a deployment falls back to its next endpoint),
    ``warn`` only publishes a :class:`~rakka_trio.BudgetAlert` event, ``throttle`` halves the
    endpoint's engine concurrency. Every action publishes the alert when the limit is crossed
    and again when spend falls back below it.
    """

    hourly: float | None = attrs.field(default=None, validator=_number(gt=0, optional=True))
    daily: float | None = attrs.field(default=None, validator=_number(gt=0, optional=True))
    on_exceeded: BudgetAction = attrs.field(
        default="reject", validator=_choice("reject", "warn", "throttle")
    )


@attrs.frozen(kw_only=True)
class EndpointConfig:
    """One provider endpoint: where it is, how to authenticate, and its resilience rules."""

    name: str = attrs.field(validator=_name)
    provider: Provider = attrs.field(validator=_choice(among=provider_names))
    base_url: str = attrs.field(validator=_url)
    credential: Credential | None = attrs.field(default=None, validator=_credential)
    model: str | None = attrs.field(default=None, validator=_optional_str)
    headers: Mapping[str, str] = attrs.field(factory=dict, validator=_headers)
    http2: bool = attrs.field(default=False, validator=_bool)
    breaker: BreakerConfig = attrs.field(
        factory=BreakerConfig, validator=_instance(BreakerConfig, "a BreakerConfig")
    )
    retry: RetryPolicy = attrs.field(
        factory=RetryPolicy, validator=_instance(RetryPolicy, "a RetryPolicy")
    )
    limits: RateLimits = attrs.field(
        factory=RateLimits, validator=_instance(RateLimits, "a RateLimits")
    )
    timeouts: Timeouts = attrs.field(factory=Timeouts, validator=_instance(Timeouts, "a Timeouts"))
    # The engine path (see docs/engine.md): queue and workers, spend budget, prices of this
    # endpoint's models (over SupervisorConfig.prices and the built-in defaults), and the
    # model's context window in tokens (a request estimated larger is sent down the chain).
    engine: EngineConfig = attrs.field(
        factory=EngineConfig, validator=_instance(EngineConfig, "an EngineConfig")
    )
    budget: BudgetConfig = attrs.field(
        factory=BudgetConfig, validator=_instance(BudgetConfig, "a BudgetConfig")
    )
    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict, converter=_prices)
    context_window: int | None = attrs.field(
        default=None, validator=_number(ge=1, integer=True, optional=True)
    )
    # Settings only the provider understands, checked by it (see docs/providers.md).
    provider_options: Mapping[str, str] = attrs.field(
        factory=dict, validator=_instance(Mapping, "a table of option names to strings")
    )

    def __attrs_post_init__(self) -> None:
        problems = get_provider(self.provider).check_options(self.provider_options)
        if problems:
            raise ConfigError([(f"provider_options.{key}", msg) for key, msg in problems])


def _default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _node_id(value: str | None) -> str:
    return _default_node_id() if value is None else value


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """Everything a supervisor runs: endpoints, deployments, sharing and supervision rules.

    ``redis_url`` enables shared rate limits (``redis_timeout`` bounds each Redis call);
    ``node_id`` names this process in a fleet
    (default ``host:pid``); ``fleet`` joins one through ``redis_url`` (docs/fleet.md).
    ``event_buffer`` bounds each subscriber's queue (a slow subscriber
    loses the oldest events and gets a ``Lagged`` marker). A crashed supervised task restarts
    with backoff (``restart_backoff`` doubling to ``restart_backoff_max``) unless it crashed
    more than ``restart_intensity`` times within ``restart_period`` seconds, which fails the
    supervisor. ``stats_interval`` paces the ``Stats`` events. ``rolling_bucket`` is the
    length in seconds of one bucket of the incident view's rolling windows (30 are kept:
    5 minutes by default). ``prices`` overrides the built-in per-model price defaults for
    every endpoint (see docs/engine.md).
    """

    endpoints: list[EndpointConfig] = attrs.field(factory=list, converter=_as_list)
    deployments: list[DeploymentConfig] = attrs.field(factory=list, converter=_as_list)
    redis_url: str | None = attrs.field(default=None, validator=_optional_str)
    redis_timeout: float = attrs.field(default=0.25, validator=_number(gt=0))
    node_id: str = attrs.field(
        factory=_default_node_id, converter=_node_id, validator=_instance(str, "a string")
    )
    event_buffer: int = attrs.field(default=1024, validator=_number(ge=1, integer=True))
    restart_intensity: int = attrs.field(default=5, validator=_number(ge=0, integer=True))
    restart_period: float = attrs.field(default=60.0, validator=_number(gt=0))
    restart_backoff: float = attrs.field(default=0.1, validator=_number(ge=0))
    restart_backoff_max: float = attrs.field(default=5.0, validator=_number(ge=0))
    stats_interval: float = attrs.field(default=1.0, validator=_number(gt=0))
    rolling_bucket: float = attrs.field(default=10.0, validator=_number(gt=0))
    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict, converter=_prices)
    fleet: FleetConfig | None = attrs.field(default=None, converter=fleet_config)

    def __attrs_post_init__(self) -> None:
        errors: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, ep in enumerate(self.endpoints):
            if not isinstance(ep, EndpointConfig):
                errors.append((f"endpoints[{i}]", "must be an EndpointConfig"))
                continue
            if ep.name in seen:
                errors.append((f"endpoints[{i}].name", f"duplicate endpoint name {ep.name!r}"))
            seen.add(ep.name)
        deployment_names: set[str] = set()
        for i, dep in enumerate(self.deployments):
            if not isinstance(dep, DeploymentConfig):
                errors.append((f"deployments[{i}]", "must be a DeploymentConfig"))
                continue
            if dep.name in deployment_names:
                errors.append((f"deployments[{i}].name", f"duplicate deployment {dep.name!r}"))
            deployment_names.add(dep.name)
            for j, ep_name in enumerate(dep.endpoints):
                if ep_name not in seen:
                    errors.append(
                        (f"deployments[{i}].endpoints[{j}]", f"unknown endpoint {ep_name!r}")
                    )
        if self.redis_url is not None and not re.match(r"^rediss?://", self.redis_url):
            errors.append(("redis_url", "must start with redis:// or rediss://"))
        if self.redis_url is None and self.fleet is not None:
            errors.append(("fleet", "needs redis_url (the fleet shares its state through Redis)"))
        if self.redis_url is None:
            for i, ep in enumerate(self.endpoints):
                if isinstance(ep, EndpointConfig) and ep.limits.mode != "local":
                    errors.append(
                        (f"endpoints[{i}].limits.mode", f"{ep.limits.mode!r} needs redis_url")
                    )
        if self.restart_backoff_max < self.restart_backoff:
            errors.append(("restart_backoff_max", "must be >= restart_backoff"))
        if errors:
            raise ConfigError(errors)

    @staticmethod
    def _raw_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The cross-field rules on raw data (for the loader, when other fields failed):
        duplicate endpoint names and deployments naming unknown endpoints."""
        problems: list[tuple[str, str]] = []
        endpoints = data.get("endpoints")
        names: set[str] = set()
        if isinstance(endpoints, list | tuple):
            for i, ep in enumerate(endpoints):
                name = ep.get("name") if isinstance(ep, Mapping) else getattr(ep, "name", None)
                if not isinstance(name, str):
                    continue
                if name in names:
                    problems.append((f"endpoints[{i}].name", f"duplicate endpoint name {name!r}"))
                names.add(name)
        deployments = data.get("deployments")
        if isinstance(deployments, list | tuple):
            for i, dep in enumerate(deployments):
                if isinstance(dep, Mapping):
                    refs = dep.get("endpoints")
                else:
                    refs = getattr(dep, "endpoints", None)
                if not isinstance(refs, list | tuple):
                    continue
                for j, ref in enumerate(refs):
                    if isinstance(ref, str) and ref not in names:
                        problems.append(
                            (f"deployments[{i}].endpoints[{j}]", f"unknown endpoint {ref!r}")
                        )
        return problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupervisorConfig:
        """Build from plain data (as parsed from TOML/JSON). Raises :class:`ConfigError`
        listing every bad field path."""
        from ._convert import structure_config

        return structure_config(data, cls)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> SupervisorConfig:
        """Load a TOML file (see README "Configuration")."""
        return load_config(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for this config, secrets masked (safe to log or show)."""
        from ._convert import unstructure_config

        return unstructure_config(self)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> SupervisorConfig:
    """Load a :class:`SupervisorConfig` from a TOML file path or a mapping."""
    import tomllib

    if isinstance(source, Mapping):
        return SupervisorConfig.from_dict(source)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([("$", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([("$", f"{path} is not valid TOML: {exc}")]) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError([("$", f"{path} holds a value Python refuses to read: {exc}")]) from None
    return SupervisorConfig.from_dict(data)
