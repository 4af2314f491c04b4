"""Provider names → :class:`Provider` objects, and the public classification functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError, ProviderError
from ._classify import COMMON_ERRORS
from ._provider import Provider

__all__ = [
    "classify_http_status",
    "classify_stream_error",
    "get_provider",
    "provider_names",
    "register_provider",
    "unregister_provider",
]

_PROVIDERS: dict[str, Provider] = {}


def register_provider(provider: Provider, *, replace: bool = False) -> Provider:
    """Make ``provider`` available as ``EndpointConfig(provider=provider.name)``.

    Registering a second provider under a taken name raises ``ValueError`` unless
    ``replace=True``. Returns ``provider`` (so a module can register at import time).
    Endpoints look their provider up on every call, so register before configuring endpoints.
    """
    if not isinstance(provider, Provider):
        raise TypeError(f"expected a Provider, got {type(provider).__name__}")
    if provider.name in _PROVIDERS and not replace:
        raise ValueError(f"a provider named {provider.name!r} is already registered")
    _PROVIDERS[provider.name] = provider
    return provider


def unregister_provider(name: str) -> None:
    """Remove the provider registered as ``name`` (``KeyError`` if there is none)."""
    del _PROVIDERS[name]


def provider_names() -> tuple[str, ...]:
    """The registered provider names, in registration order."""
    return tuple(_PROVIDERS)


def get_provider(name: str) -> Provider:
    """The provider registered as ``name``; :class:`~rakka_trio.ConfigError` if none is."""
    try:
        return _PROVIDERS[name]
    except (KeyError, TypeError):
        known = ", ".join(_PROVIDERS)
        raise ConfigError(
            [("provider", f"unknown provider {name!r}; expected one of {known}")]
        ) from None


def classify_http_status(
    status: int,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | Mapping[str, Any] | None = None,
    *,
    provider: str | None = None,
    endpoint: str | None = None,
) -> ProviderError:
    """Map a provider's error response to the typed :class:`~rakka_trio.RakkaError` for it.

    With ``provider`` naming a registered provider, that provider's rules apply (e.g. Azure
    OpenAI's content-filter errors); otherwise (the default) the shared rules, which read
    OpenAI (``{"error": {"type", "code", "message"}}``), Anthropic (``{"type": "error",
    "error": {"type": "overloaded_error", ...}}``) and Gemini (``{"error": {"code", "status",
    "message"}}``) bodies; ``provider`` is then only the label the error carries.
    ``x-should-retry: true|false`` overrides the class's ``retryable``. Raises
    :class:`ValueError` for a non-error status.
    """
    found = _PROVIDERS.get(provider) if provider is not None else None
    if found is not None:
        return found.classify_http_error(status, headers, body, endpoint=endpoint)
    return COMMON_ERRORS.http_error(status, headers, body, provider=provider, endpoint=endpoint)


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
    :class:`~rakka_trio.Overloaded`, ``rate_limit_error`` → :class:`~rakka_trio.RateLimited`,
    ``api_error`` → :class:`~rakka_trio.ServerError` ...), but ``status`` stays ``None``: the
    HTTP response was a 200. An error nothing recognises is a
    :class:`~rakka_trio.StreamError`. ``provider`` selects rules as for
    :func:`classify_http_status`.
    """
    found = _PROVIDERS.get(provider) if provider is not None else None
    if found is not None:
        return found.classify_stream_error(payload, endpoint=endpoint)
    return COMMON_ERRORS.stream_error(payload, provider=provider, endpoint=endpoint)
