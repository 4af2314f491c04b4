"""The provider plug-in interface: everything one wire format needs, in one object.

A :class:`Provider` builds the HTTP call for a request, says how to authenticate, classifies
error responses, reads rate-limit headers and makes the stream adapter. The rest of the library
only ever asks the provider registered under an endpoint's ``provider`` name, so adding a
provider is one module with one subclass, registered with
:func:`~rakka_trio.register_provider`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import ProviderError
from ._base import StreamAdapter
from ._classify import COMMON_ERRORS, ErrorClassifier
from ._ratelimit import RateLimitHint

if TYPE_CHECKING:
    from .._credentials import Secret
    from .._request import ChatRequest

__all__ = [
    "HttpCall",
    "Provider",
    "function_specs",
    "join_versioned",
    "sampling",
    "split_system",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@attrs.frozen(kw_only=True)
class HttpCall:
    """The provider HTTP call for a request: ``POST url`` with the ``json`` body, query
    ``params`` and request ``headers`` (on top of the session's headers)."""

    url: str
    json: dict[str, Any]
    params: dict[str, str] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)


class Provider(abc.ABC):
    """One provider wire format. Subclass it, then register an instance under its name.

    Required: :meth:`build_request` and :meth:`stream_adapter`. The rest have defaults that
    suit an OpenAI-like API: ``Authorization: Bearer`` auth, the shared error vocabulary
    (:attr:`errors`), no rate-limit headers, no provider options. Every error a provider
    builds carries its :attr:`name`.
    """

    errors: ErrorClassifier = COMMON_ERRORS
    """Classifies this provider's error bodies (override with a subclass for own codes)."""

    option_names: frozenset[str] = frozenset()
    """The ``EndpointConfig.provider_options`` keys this provider understands."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"provider names are 1-64 lower-case letters, digits, '.', '_' or '-'; got {name!r}"
            )
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # --- the call --------------------------------------------------------------------------

    @abc.abstractmethod
    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """The streaming HTTP call performing ``request`` with ``model`` at ``base_url``.

        ``options`` are the endpoint's ``provider_options``. ``request.extra`` must be merged
        into the body last, so callers can set any provider field.
        """

    def auth_headers(self, secret: Secret | None, *, options: Mapping[str, str]) -> dict[str, str]:
        """The authentication (and protocol version) headers for ``secret`` (``None``: no
        credential configured). Default: ``Authorization: Bearer``."""
        if secret is None:
            return {}
        return {"authorization": f"Bearer {secret.get_secret_value()}"}

    def check_options(self, options: Mapping[str, str]) -> list[tuple[str, str]]:
        """Problems with the endpoint's ``provider_options`` as ``(key, message)`` pairs
        (default: every key outside :attr:`option_names` is unknown)."""
        problems: list[tuple[str, str]] = []
        for key, value in options.items():
            if key not in self.option_names:
                known = ", ".join(sorted(self.option_names)) or "none"
                problems.append(
                    (key, f"unknown option for provider {self.name!r} (known: {known})")
                )
            elif not isinstance(value, str) or not value:
                problems.append((key, f"must be a non-empty string, got {value!r}"))
        return problems

    # --- the response ----------------------------------------------------------------------

    def classify_http_error(
        self,
        status: int,
        headers: Mapping[str, str] | None,
        body: Any,
        *,
        endpoint: str | None = None,
    ) -> ProviderError:
        """The typed error for an HTTP error response (``status`` 400-599)."""
        return self.errors.http_error(status, headers, body, provider=self.name, endpoint=endpoint)

    def classify_stream_error(self, payload: Any, *, endpoint: str | None = None) -> ProviderError:
        """The typed error for an error object reported inside a started stream."""
        return self.errors.stream_error(payload, provider=self.name, endpoint=endpoint)

    def rate_limit_hints(
        self, headers: Mapping[str, str], *, wall: float | None = None
    ) -> dict[str, RateLimitHint]:
        """What the response's rate-limit headers say, per dimension (``"requests"``,
        ``"tokens"``, ``"input_tokens"``, ``"output_tokens"``); ``wall`` is the Unix time
        to measure resets from. Default: the provider sends none."""
        return {}

    @abc.abstractmethod
    def stream_adapter(self, *, endpoint: str | None = None) -> StreamAdapter:
        """A fresh adapter for one streamed response; its errors name ``endpoint``."""


# --- helpers for building requests ------------------------------------------------------------


def join_versioned(base: str, *, versioned: str, path: str) -> str:
    """``base`` + ``path``, inserting the API version segment if ``base`` lacks one."""
    base = base.rstrip("/")
    if not base.rsplit("/", 1)[-1].startswith("v1"):
        base = f"{base}/{versioned}"
    return f"{base}{path}"


def split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """System/developer messages joined as one text, and the other messages."""
    system = [m for m in messages if m["role"] in ("system", "developer")]
    rest = [m for m in messages if m["role"] not in ("system", "developer")]
    text = "\n\n".join(str(m.get("content", "")) for m in system) if system else None
    return text, rest


def function_specs(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI function tools as plain ``{name, description, parameters}`` specs."""
    specs = []
    for tool in tools or []:
        fn = tool.get("function", tool)
        specs.append(
            {
                "name": fn.get("name"),
                "description": fn.get("description", ""),
                "parameters": fn.get("parameters", {"type": "object", "properties": {}}),
            }
        )
    return specs


def sampling(body: dict[str, Any], request: ChatRequest) -> None:
    """Set ``temperature`` and ``top_p`` on ``body`` when the request has them."""
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
