"""Testing helpers for rakka-trio users and its own test suite.

The centrepiece is a loopback **mock LLM provider**: a real HTTP/1.1 server (Trio + h11) that
speaks OpenAI chat completions, the OpenAI Responses API, Anthropic Messages, Gemini, Azure
OpenAI deployments and an OpenAI-compatible reasoning server, streaming and not, with usage and
rate-limit headers, and plays a scriptable fault plan per route::

    import trio
    from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

    async def main() -> None:
        mock = MockProvider(reply="Hello from the mock provider.", chunks=8, api_key="sk-mock-1")
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_mock_provider, mock)
            mock.add_fault("openai", Fault.status(503), times=5)
            base_url = mock.base_url_for("openai")   # http://127.0.0.1:PORT/v1
            ...
            nursery.cancel_scope.cancel()

Every module behind this package is private; the names below are the supported API.
"""

from ._faults import Fault, FaultKind, FaultRule, RouteSelector
from ._mock_provider import (
    MockProvider,
    MockRateLimits,
    MockStatistics,
    ProviderName,
    RecordedRequest,
    serve_mock_provider,
)
from ._plan import ROUTES, Route
from ._server import MockServer, MockServerLimits

__all__ = [
    "ROUTES",
    "Fault",
    "FaultKind",
    "FaultRule",
    "MockProvider",
    "MockRateLimits",
    "MockServer",
    "MockServerLimits",
    "MockStatistics",
    "ProviderName",
    "RecordedRequest",
    "Route",
    "RouteSelector",
    "serve_mock_provider",
]
