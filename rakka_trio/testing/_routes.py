"""The mock's routes: which path is which provider, and each route's :class:`Wire`.

Paths follow each provider's SDK conventions, so an endpoint configured with
:meth:`MockProvider.base_url_for <rakka_trio.testing.MockProvider.base_url_for>` sends its
requests where the mock expects them.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import attrs

from ._plan import Route, Wire
from ._wire_anthropic import AnthropicWire
from ._wire_azure import AzureWire
from ._wire_gemini import GeminiWire
from ._wire_openai import CompatWire, OpenAIChatWire
from ._wire_responses import ResponsesWire

__all__ = ["ProviderName", "RouteMatch", "base_url_for", "make_wires", "match_route", "url_for"]

ProviderName = Literal[
    "openai", "openai-responses", "openai-compatible", "anthropic", "gemini", "azure-openai"
]

_STATIC_ROUTES: Final[dict[str, Route]] = {
    "/v1/chat/completions": "openai",
    "/v1/responses": "openai-responses",
    "/v1/messages": "anthropic",
    "/compat/v1/chat/completions": "openai-compatible",
}
_GEMINI_PATH: Final = re.compile(
    r"^/(?:v1beta|v1)/models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent)$"
)
_AZURE_PATH: Final = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/chat/completions$")
_BASE_PATHS: Final[dict[str, str]] = {
    "openai": "/v1",
    "openai-responses": "/v1",
    "openai-compatible": "/compat/v1",
    "anthropic": "",
    "gemini": "/v1beta",
    "azure-openai": "",
}


@attrs.frozen
class RouteMatch:
    """A request path's route; ``model`` when the path names it (Gemini's model, Azure's
    deployment); ``stream`` when the path decides streaming (Gemini), else ``None``."""

    route: Route
    model: str | None = None
    stream: bool | None = None


def match_route(path: str) -> RouteMatch | None:
    """The route of a (percent-decoded) request path, or ``None`` for an unknown path."""
    route = _STATIC_ROUTES.get(path)
    if route is not None:
        return RouteMatch(route)
    m = _GEMINI_PATH.match(path)
    if m is not None:
        return RouteMatch("gemini", m["model"], m["method"] == "streamGenerateContent")
    m = _AZURE_PATH.match(path)
    if m is not None:
        return RouteMatch("azure-openai", m["deployment"])
    return None


def base_url_for(url: str, provider: str) -> str:
    """The ``base_url`` an endpoint of ``provider`` uses to reach the mock at ``url``."""
    try:
        return url + _BASE_PATHS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}") from None


def url_for(url: str, route: Route, *, model: str, stream: bool) -> str:
    """The full URL of ``route`` (Gemini: ``model``'s streaming or unary method; Azure: the
    deployment ``model``, with an ``api-version``)."""
    if route == "gemini":
        if stream:
            return f"{url}/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return f"{url}/v1beta/models/{model}:generateContent"
    if route == "azure-openai":
        return f"{url}/openai/deployments/{model}/chat/completions?api-version=2024-10-21"
    paths = {v: k for k, v in _STATIC_ROUTES.items()}
    if route not in paths:
        raise ValueError(f"unknown route {route!r}")
    return url + paths[route]


def make_wires(*, compat_reasoning_field: str | None, compat_sends_done: bool) -> dict[Route, Wire]:
    """One wire per route (the compatible server's behaviour as configured)."""
    wires: list[Wire] = [
        OpenAIChatWire(),
        ResponsesWire(),
        AnthropicWire(),
        GeminiWire(),
        AzureWire(),
        CompatWire(reasoning_field=compat_reasoning_field, sends_done=compat_sends_done),
    ]
    return {wire.route: wire for wire in wires}
