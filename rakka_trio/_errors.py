"""One exception hierarchy for everything rakka-trio raises.

Every error says whether a retry could help (``retryable``) and whether it is evidence that the
endpoint is unhealthy (``counts_as_circuit_failure``). Provider errors carry the provider and the
endpoint name. Messages pass through :func:`~rakka_trio._redact.redact`, so a provider echoing a
key back never leaks it into a log line or the control feed. Turning a provider's error body
into one of these classes is each provider's job (``_providers/``).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import trio

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
    "LocalRateLimited",
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
    ``key`` is the limit key (``provider:server:fingerprint:family``; never the credential).
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
    ``retry_at`` is ``math.inf`` for a breaker forced open without expiry. The message gives
    the wait in seconds from ``now`` (default: the current Trio time).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        state: str,
        opened_at: float,
        retry_at: float,
        reason: str | None = None,
        now: float | None = None,
    ) -> None:
        if math.isinf(retry_at):
            until = "until reset"
        else:
            if now is None:
                try:
                    now = trio.current_time()
                except RuntimeError:  # built outside a Trio run: no clock to compare with
                    now = retry_at
            until = f"retry in {max(0.0, retry_at - now):.3f}s"
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


class LocalRateLimited(RateLimited, RateLimitExceeded):
    """This process's own rate limiter would make the call wait longer than ``max_wait``:
    nothing was sent, the provider said nothing. "No capacity here now" — a deployment moves
    on to its next endpoint.

    Both a :class:`RateLimited` (``provider``, ``endpoint``, ``retry_after`` = the seconds the
    budget needs, ``None`` when only a concurrency permit was missing) and a
    :class:`RateLimitExceeded` (``key``, ``wait``). ``retryable`` (later, or elsewhere), but an
    endpoint never retries it itself: the call already waited ``max_wait`` there.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        wait: float,
        provider: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        where = "/".join(x for x in (provider, endpoint) if x)
        # Neither parent's __init__: each would hand the other's arguments up the MRO.
        RakkaError.__init__(self, f"{where}: {message}" if where else message, retryable=True)
        self.provider = provider
        self.endpoint = endpoint
        self.status = None
        self.code = "local_rate_limit"
        self.retry_after = wait if 0 < wait < math.inf else None
        self.key = key
        self.wait = wait


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


# --- server wait hints ---------------------------------------------------------------------


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
