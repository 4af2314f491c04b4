"""Provider error bodies → the typed :class:`~rakka_trio.ProviderError` for them.

:class:`ErrorClassifier` holds the vocabulary the built-in providers share: it reads the three
common error-body shapes (OpenAI ``{"error": {"type", "code", "message"}}``, Anthropic
``{"type": "error", "error": {"type", "message"}}``, Google ``{"error": {"code", "status",
"message"}}``) and maps HTTP statuses and error types/codes to classes. A provider with its own
codes subclasses it (see the Azure OpenAI provider) and sets it as its ``errors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import (
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    Forbidden,
    NotFound,
    Overloaded,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    StreamError,
    Timeout,
    Unauthorized,
    parse_retry_after,
)

__all__ = ["COMMON_ERRORS", "ErrorClassifier", "ErrorFields", "lower_headers"]

_MAX_MESSAGE = 500  # longer provider messages are cut (the error classes cut again)


def lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` with lower-case names (HTTP header names are case-insensitive)."""
    if not headers:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


@attrs.frozen(kw_only=True)
class ErrorFields:
    """What an error body says: ``type`` (OpenAI/Anthropic ``type``, Google ``status``),
    ``code`` (a string code), ``number`` (a numeric code, e.g. Google's ``429``), ``message``,
    and ``error`` (the error object itself, for provider-specific details; empty if none)."""

    type: str | None = None
    code: str | None = None
    number: int | None = None
    message: str = ""
    error: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def keys(self) -> frozenset[str]:
        """``type`` and ``code`` in lower case: what the class tables are keyed by."""
        return frozenset(k.lower() for k in (self.type, self.code) if k)


class ErrorClassifier:
    """Turns a provider's error response (or in-stream error object) into a typed error.

    The class attributes are the vocabulary; a provider subclass extends them or overrides
    :meth:`fields` (reading its body shape) and :meth:`classify` (the mapping).
    """

    context_codes: frozenset[str] = frozenset(
        {"context_length_exceeded", "string_above_max_length"}
    )
    context_phrases: tuple[str, ...] = (
        "maximum context length",
        "context window",
        "prompt is too long",
        "too many tokens",
        "exceeds the maximum number of tokens",
        "input token count",
    )
    filter_codes: frozenset[str] = frozenset(
        {"content_filter", "content_policy_violation", "safety", "responsibleaipolicyviolation"}
    )
    quota_codes: frozenset[str] = frozenset(
        {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "quota_exceeded"}
    )
    # The HTTP status an error type or gRPC-style status stands for, used to classify errors
    # that arrive inside a 200 stream (whose real HTTP status says nothing).
    stream_status: Mapping[str, int] = {
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
        "api_error": 500,
        "server_error": 500,
        "internal": 500,
        "internal_error": 500,
        "unavailable": 503,
        "timeout_error": 504,
        "deadline_exceeded": 504,
        "overloaded_error": 529,
        **dict.fromkeys(
            (
                "insufficient_quota",
                "billing_hard_limit_reached",
                "billing_not_active",
                "quota_exceeded",
            ),
            429,
        ),
        **dict.fromkeys(
            (
                "content_filter",
                "content_policy_violation",
                "safety",
                "responsibleaipolicyviolation",
                "context_length_exceeded",
                "string_above_max_length",
            ),
            400,
        ),
    }

    # --- reading bodies ------------------------------------------------------------------------

    def fields(self, body: Any) -> ErrorFields:
        """Read an error body (bytes, text or parsed JSON) into :class:`ErrorFields`."""
        data: Any = body
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body).decode("utf-8", "replace")
        if isinstance(data, str):
            text = data
            try:
                data = json.loads(text)
            except ValueError:
                return ErrorFields(message=text.strip()[:_MAX_MESSAGE])
        if not isinstance(data, Mapping):
            return ErrorFields(message="" if data is None else str(data)[:_MAX_MESSAGE])
        err: Any = data.get("error", data)
        if isinstance(err, str):  # {"error": "message"} (some OpenAI-compatible servers)
            return ErrorFields(message=err)
        if not isinstance(err, Mapping):
            return ErrorFields()
        etype, code, status = err.get("type"), err.get("code"), err.get("status")
        message = err.get("message") or err.get("detail") or ""
        number = code if isinstance(code, int) and not isinstance(code, bool) else None
        return ErrorFields(
            # Google puts its "RESOURCE_EXHAUSTED"-style name in status, not type.
            type=etype if isinstance(etype, str) else (str(status) if status else None),
            code=code if isinstance(code, str) else None,
            number=number,
            message=str(message),
            error=err,
        )

    # --- classifying ---------------------------------------------------------------------------

    def http_error(
        self,
        status: int,
        headers: Mapping[str, str] | None,
        body: Any,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
    ) -> ProviderError:
        """The error for an HTTP error response (``status`` 400-599, else ``ValueError``)."""
        if not 400 <= status <= 599:
            raise ValueError(f"HTTP status {status} is not an error status")
        return self.classify(
            status, headers, self.fields(body), provider=provider, endpoint=endpoint, http=True
        )

    def stream_error(
        self, payload: Any, *, provider: str | None = None, endpoint: str | None = None
    ) -> ProviderError:
        """The error for an error object reported *inside* a started (HTTP 200) stream.

        Its type or code (the code first: it is the more specific) picks the status it stands
        for, else a numeric code does; the class is then what :meth:`http_error` gives for that
        status, but ``status`` stays ``None``. An error nothing recognises is a
        :class:`~rakka_trio.StreamError`.
        """
        found = self.fields(payload)
        hint: int | None = None
        for key in (found.code, found.type):
            if key and hint is None:
                hint = self.stream_status.get(key.lower())
        if hint is None and found.number is not None and 400 <= found.number <= 599:
            hint = found.number
        if hint is None:
            return StreamError(
                found.message or found.type or found.code or "error in stream",
                provider=provider,
                endpoint=endpoint,
                code=found.code or found.type,
            )
        return self.classify(hint, None, found, provider=provider, endpoint=endpoint, http=False)

    def classify(
        self,
        status: int,
        headers: Mapping[str, str] | None,
        found: ErrorFields,
        *,
        provider: str | None,
        endpoint: str | None,
        http: bool,
    ) -> ProviderError:
        """Map a status and the body's fields to an error. ``http=False`` means ``status`` is
        only a hint derived from an in-stream error, so it is not reported as the status.
        ``x-should-retry: true|false`` overrides the class's ``retryable``."""
        h = lower_headers(headers)
        keys = found.keys
        lowered = found.message.lower()
        should = h.get("x-should-retry", "").strip().lower()
        retryable = True if should == "true" else False if should == "false" else None
        kw: dict[str, Any] = {
            "provider": provider,
            "endpoint": endpoint,
            "status": status if http else None,
            "code": found.code or found.type,
            "retry_after": parse_retry_after(h),
            "retryable": retryable,
        }
        text = found.message or (found.type or found.code or "error")

        if keys & self.quota_codes:
            kw["retryable"] = False  # a hint can't make an empty wallet retryable
            return QuotaExhausted(text, **kw)
        if status == 529 or "overloaded_error" in keys:
            return Overloaded(text, **kw)
        if keys & self.filter_codes:
            return ContentFiltered(text, reason=self.filter_reason(found), **kw)
        if keys & self.context_codes or (
            status in (400, 413, 422) and any(p in lowered for p in self.context_phrases)
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

    def filter_reason(self, found: ErrorFields) -> str | None:
        """The ``reason`` of a :class:`~rakka_trio.ContentFiltered` built from ``found``."""
        return found.code or found.type


COMMON_ERRORS = ErrorClassifier()
"""The shared classifier: OpenAI, Anthropic and Google error shapes and vocabulary."""
