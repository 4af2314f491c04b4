"""One exception hierarchy for everything rakka-trio raises.

Every error says whether a retry could help (``retryable``) and whether it is evidence that the
endpoint is unhealthy (``counts_as_circuit_failure``). Provider errors carry the provider and the
endpoint name. Messages pass through :func:`~rakka_trio._redact.redact`, so a provider echoing a
key back never leaks it into a log line or the control feed.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from ._redact import redact

__all__ = [
    "Backpressure",
    "BadRequest",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "EventTooLarge",
    "Forbidden",
    "LimiterUnavailable",
    "NetworkError",
    "NotFound",
    "Overloaded",
    "ProviderError",
    "QuotaExhausted",
    "RakkaError",
    "RateLimitExceeded",
    "RateLimited",
    "ServerError",
    "StreamError",
    "StreamTruncated",
    "SupervisorError",
    "Timeout",
    "Unauthorized",
    "UnknownEndpoint",
    "classify_http_status",
    "classify_stream_error",
    "parse_retry_after",
]

_MAX_MESSAGE = 500


class RakkaError(Exception):
    """Base class of every error raised by rakka-trio.

    ``retryable`` and ``counts_as_circuit_failure`` default per class; a provider hint such as
    ``x-should-retry`` may override ``retryable`` on one instance.
    """

    retryable: bool = False
    counts_as_circuit_failure: bool = False

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        message = redact(message)
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class ConfigError(RakkaError, ValueError):
    """Invalid configuration. ``errors`` lists every problem as ``(path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]] | str) -> None:
        if isinstance(errors, str):
            errors = [("$", errors)]
        self.errors: list[tuple[str, str]] = list(errors)
        lines = [f"{path}: {msg}" for path, msg in self.errors]
        if len(lines) == 1:
            text = f"invalid configuration: {lines[0]}"
        else:
            text = f"invalid configuration ({len(lines)} problems):\n  " + "\n  ".join(lines)
        # Config errors may legitimately be long (one line per bad field): no truncation.
        Exception.__init__(self, redact(text))
        self.message = redact(text)


class UnknownEndpoint(RakkaError, KeyError):
    """No endpoint (or deployment) of that name is registered with the supervisor."""

    def __init__(self, name: str, *, kind: str = "endpoint") -> None:
        super().__init__(f"unknown {kind} {name!r}")
        self.name = name

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


class SupervisorError(RakkaError):
    """A supervised task crashed more often than the restart intensity allows."""


class Backpressure(RakkaError):
    """The request queue is full (capacity policy ``reject``) or its wait timed out."""

    retryable = True


class BudgetExceeded(RakkaError):
    """A spend budget is exhausted and its policy is ``reject``."""


class RateLimitExceeded(RakkaError):
    """Our own rate limiter refused an admission (no request was sent).

    ``wait`` is the seconds the admission would need: ``math.inf`` when the cost exceeds a
    burst and can never be admitted, otherwise it was more than the caller's ``max_wait``.
    ``key`` is the limit key (``provider:fingerprint:family``; never the credential).
    """

    def __init__(self, message: str, *, key: str, wait: float) -> None:
        super().__init__(message, retryable=math.isfinite(wait))
        self.key = key
        self.wait = wait


class LimiterUnavailable(RakkaError):
    """Shared rate limits cannot be checked (Redis unreachable or too slow) and the key's
    ``redis_failure_policy`` is ``fail_closed``."""

    retryable = True

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class CircuitOpen(RakkaError):
    """The endpoint's breaker refuses calls: fail fast.

    ``opened_at`` and ``retry_at`` are on the Trio clock (:func:`trio.current_time`);
    ``retry_at`` is ``math.inf`` for a breaker forced open without expiry.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        state: str,
        opened_at: float,
        retry_at: float,
        reason: str | None = None,
    ) -> None:
        until = "until reset" if math.isinf(retry_at) else f"retry at t={retry_at:.3f}"
        why = f" ({reason})" if reason else ""
        super().__init__(f"circuit for {endpoint!r} is {state}{why}; {until}")
        self.endpoint = endpoint
        self.state = state
        self.opened_at = opened_at
        self.retry_at = retry_at
        self.reason = reason


class ProviderError(RakkaError):
    """An error reported by (or on the way to) a remote provider.

    ``status`` is the HTTP status when there was one, ``code`` the provider's error code or type
    (``"insufficient_quota"``, ``"overloaded_error"`` ...), ``retry_after`` the server's wait hint
    in seconds.
    """

    def __init__(
        self,
        message: str = "",
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        where = "/".join(x for x in (provider, endpoint) if x)
        prefix = f"{where}: " if where else ""
        status_text = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{prefix}{status_text}{message}", retryable=retryable)
        self.provider = provider
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """HTTP 429 (or a rate-limit error event): wait ``retry_after`` seconds and retry."""

    retryable = True


class QuotaExhausted(ProviderError):
    """The account is out of quota or credit (OpenAI ``insufficient_quota``): never retried."""


class ContentFiltered(ProviderError):
    """The provider refused or stopped the output for safety/content policy; ``reason`` says why."""

    def __init__(self, message: str = "", *, reason: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


class BadRequest(ProviderError):
    """The request itself is invalid (HTTP 400/413/422 and other client errors)."""


class ContextLengthExceeded(BadRequest):
    """The prompt (plus ``max_tokens``) does not fit the model's context window."""


class Unauthorized(ProviderError):
    """HTTP 401: the credential was rejected."""


class Forbidden(ProviderError):
    """HTTP 403: the credential may not use this resource."""


class NotFound(ProviderError):
    """HTTP 404: unknown model or path."""


class ServerError(ProviderError):
    """HTTP 5xx from the provider."""

    retryable = True
    counts_as_circuit_failure = True


class Overloaded(ServerError):
    """The provider is overloaded (Anthropic 529 / ``overloaded_error``)."""


class Timeout(ProviderError, TimeoutError):
    """The provider (or the network to it) was too slow: ``phase`` is ``connect``, ``write``,
    ``first_byte``, ``read_gap`` or ``server`` (HTTP 408). Also a builtin :class:`TimeoutError`.

    A time limit of our own running out is :class:`DeadlineExceeded` instead.
    """

    retryable = True
    counts_as_circuit_failure = True

    def __init__(self, message: str = "", *, phase: str, **kw: Any) -> None:
        super().__init__(message or f"timed out ({phase})", **kw)
        self.phase = phase


class DeadlineExceeded(RakkaError, TimeoutError):
    """A local time limit ran out: not a :class:`ProviderError`, and never a breaker failure.

    ``phase`` says which: ``total`` (the endpoint's total timeout, or a retry policy's
    ``deadline``), ``deadline`` (the request's own deadline while it was queued) or ``pool``
    (no pooled HTTP connection became free in time). ``endpoint`` names the endpoint when
    there is one. Also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches
    every timeout, ours and the provider's.
    """

    def __init__(
        self,
        message: str = "",
        *,
        phase: str,
        endpoint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        prefix = f"{endpoint}: " if endpoint else ""
        super().__init__(prefix + (message or f"deadline exceeded ({phase})"), retryable=retryable)
        self.phase = phase
        self.endpoint = endpoint


class NetworkError(ProviderError):
    """Connection refused, reset or otherwise broken below HTTP."""

    retryable = True
    counts_as_circuit_failure = True


class StreamError(ProviderError):
    """An error reported inside a stream that had started (an error chunk or event)."""

    retryable = True
    counts_as_circuit_failure = True


class StreamTruncated(StreamError):
    """The stream ended before the provider's terminal marker."""


class EventTooLarge(StreamError):
    """One server-sent event grew past the decoder's ``max_event_size``."""

    retryable = False


# --- classification -------------------------------------------------------------------------

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = (
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",
    "input token count",
)
_FILTER_CODES = frozenset(
    {"content_filter", "content_policy_violation", "safety", "responsibleaipolicyviolation"}
)
_QUOTA_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "quota_exceeded"}
)


def _lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Return the server's requested wait in seconds, or ``None`` when there is no usable hint.

    Order of precedence: ``retry-after-ms`` (milliseconds, OpenAI/Anthropic), then
    ``Retry-After`` as delta-seconds or as an HTTP-date (RFC 9110 §10.2.3). A date in the past
    gives ``0.0``; garbage gives ``None``. ``now`` is the wall-clock time (default
    :func:`time.time`) used for HTTP-dates. No cap is applied here; the retry policy caps it.
    """
    h = _lower_headers(headers)
    raw_ms = h.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms.strip())
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = h.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    wall = time.time() if now is None else now
    return max(0.0, when.timestamp() - wall)


def _error_fields(body: Any) -> tuple[str | None, str | None, str]:
    """Pull ``(type, code, message)`` from a provider error body (OpenAI, Anthropic, Gemini)."""
    data: Any = body
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body).decode("utf-8", "replace")
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text)
        except ValueError:
            return None, None, text.strip()[:_MAX_MESSAGE]
    if not isinstance(data, Mapping):
        return None, None, "" if data is None else str(data)[:_MAX_MESSAGE]
    err: Any = data.get("error", data)
    if isinstance(err, str):  # {"error": "message"} (some OpenAI-compatible servers)
        return None, None, err
    if not isinstance(err, Mapping):
        return None, None, ""
    etype = err.get("type")
    code = err.get("code")
    status = err.get("status")  # Gemini: "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", ...
    message = err.get("message") or err.get("detail") or ""
    type_s = str(etype) if isinstance(etype, str) else (str(status) if status else None)
    code_s = str(code) if isinstance(code, str) else None
    return type_s, code_s, str(message)


def classify_http_status(
    status: int,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | Mapping[str, Any] | None = None,
    *,
    provider: str | None = None,
    endpoint: str | None = None,
) -> ProviderError:
    """Map a provider's error response to the typed :class:`RakkaError` for it.

    Understands OpenAI (``{"error": {"type", "code", "message"}}``), Anthropic
    (``{"type": "error", "error": {"type": "overloaded_error", ...}}``) and Gemini
    (``{"error": {"code", "status", "message"}}``) bodies. ``x-should-retry: true|false``
    overrides the class's ``retryable``. Raises :class:`ValueError` for a non-error status.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"HTTP status {status} is not an error status")
    return _classify(status, headers, body, provider=provider, endpoint=endpoint, http=True)


def _classify(
    status: int,
    headers: Mapping[str, str] | None,
    body: bytes | str | Mapping[str, Any] | None,
    *,
    provider: str | None,
    endpoint: str | None,
    http: bool,
) -> ProviderError:
    """:func:`classify_http_status`'s mapping; ``http=False`` means ``status`` is only a hint
    derived from an in-stream error, so it is not reported as the response's status."""
    h = _lower_headers(headers)
    etype, code, message = _error_fields(body)
    keys = {k.lower() for k in (etype, code) if k}
    lowered = message.lower()
    retry_after = parse_retry_after(h)
    should = h.get("x-should-retry", "").strip().lower()
    retryable = True if should == "true" else False if should == "false" else None
    kw: dict[str, Any] = {
        "provider": provider,
        "endpoint": endpoint,
        "status": status if http else None,
        "code": code or etype,
        "retry_after": retry_after,
        "retryable": retryable,
    }
    text = message or (etype or code or "error")

    if keys & _QUOTA_CODES:
        kw["retryable"] = False  # a hint can't make an empty wallet retryable
        return QuotaExhausted(text, **kw)
    if status == 529 or "overloaded_error" in keys:
        return Overloaded(text, **kw)
    if keys & _FILTER_CODES:
        return ContentFiltered(text, reason=code or etype, **kw)
    if keys & _CONTEXT_CODES or (
        status in (400, 413, 422) and any(p in lowered for p in _CONTEXT_PHRASES)
    ):
        return ContextLengthExceeded(text, **kw)
    if status == 429 or "rate_limit_error" in keys or "resource_exhausted" in keys:
        return RateLimited(text, **kw)
    if status == 401 or "authentication_error" in keys:
        return Unauthorized(text, **kw)
    if status == 403 or "permission_error" in keys or "permission_denied" in keys:
        return Forbidden(text, **kw)
    if status == 404 or "not_found_error" in keys:
        return NotFound(text, **kw)
    if status == 408:
        return Timeout(text, phase="server", **kw)
    if status == 402:
        kw["retryable"] = False
        return QuotaExhausted(text, **kw)
    if status >= 500:
        if status in (501, 505) and retryable is None:
            kw["retryable"] = False  # not implemented / unsupported: retrying can't help
        return ServerError(text, **kw)
    if status == 409 and retryable is None:
        kw["retryable"] = True  # lock conflicts: the official SDKs retry these
    return BadRequest(text, **kw)


# The HTTP status each provider's error type or gRPC-style status stands for, used to classify
# errors that arrive inside a 200 stream (whose real HTTP status says nothing).
_STREAM_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "invalid_argument": 400,
    "failed_precondition": 400,
    "invalid_prompt": 400,
    "authentication_error": 401,
    "unauthenticated": 401,
    "billing_error": 402,
    "permission_error": 403,
    "permission_denied": 403,
    "not_found_error": 404,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "resource_exhausted": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "internal": 500,
    "internal_error": 500,
    "unavailable": 503,
    "timeout_error": 504,
    "deadline_exceeded": 504,
    "overloaded_error": 529,
}
_STREAM_ERROR_STATUS.update(dict.fromkeys(_QUOTA_CODES, 429))
_STREAM_ERROR_STATUS.update(dict.fromkeys(_FILTER_CODES | _CONTEXT_CODES, 400))


def classify_stream_error(
    payload: bytes | str | Mapping[str, Any] | None,
    *,
    provider: str | None = None,
    endpoint: str | None = None,
) -> ProviderError:
    """Map an error object reported *inside* a started stream to its typed error.

    The payload is the provider's error (an OpenAI ``{"error": {...}}`` chunk, an Anthropic
    ``event: error`` body, a Gemini ``{"error": {"code", "status"}}`` event, a Responses API
    ``error`` event). Its type or numeric code selects the class exactly as
    :func:`classify_http_status` would for that HTTP status (``overloaded_error`` →
    :class:`Overloaded`, ``rate_limit_error`` → :class:`RateLimited`, ``api_error`` →
    :class:`ServerError` ...), but ``status`` stays ``None``: the HTTP response was a 200.
    An error nothing recognises is a :class:`StreamError`.
    """
    etype, code, message = _error_fields(payload)
    hint: int | None = None
    for key in (code, etype):  # the code is the more specific (OpenAI: type + code)
        if key and hint is None:
            hint = _STREAM_ERROR_STATUS.get(key.lower())
    if hint is None:
        data: Any = payload
        if isinstance(payload, str | bytes):
            try:
                data = json.loads(payload)
            except ValueError:
                data = None
        err = data.get("error", data) if isinstance(data, Mapping) else None
        number = err.get("code") if isinstance(err, Mapping) else None
        if isinstance(number, int) and not isinstance(number, bool) and 400 <= number <= 599:
            hint = number
    if hint is None:
        return StreamError(
            message or etype or code or "error in stream",
            provider=provider,
            endpoint=endpoint,
            code=code or etype,
        )
    return _classify(hint, None, payload, provider=provider, endpoint=endpoint, http=False)
