"""Providers: everything that differs from one LLM API to the next, behind one interface.

A :class:`Provider` (``_provider.py``) builds the HTTP call, names the auth headers, classifies
error bodies (``_classify.py``), reads rate-limit headers (``_ratelimit.py``) and makes the
stream adapter (``_base.py``: server-sent events in, provider-neutral chunks out; pure, no
I/O). One module per wire format holds its adapter and provider; the registry
(``_registry.py``) maps the names endpoints use to provider objects. Adding a provider is one
module and one :func:`register_provider` call (here for the built-in ones).
"""

from __future__ import annotations

from ._base import StreamAdapter
from ._classify import COMMON_ERRORS, ErrorClassifier, ErrorFields
from ._provider import HttpCall, Provider
from ._ratelimit import DIMENSIONS, HeaderNames, RateLimitHint, read_hints
from ._registry import (
    classify_http_status,
    classify_stream_error,
    get_provider,
    provider_names,
    register_provider,
    unregister_provider,
)
from .anthropic import AnthropicAdapter, AnthropicProvider
from .azure_openai import AzureChatAdapter, AzureOpenAIProvider
from .gemini import GeminiAdapter, GeminiProvider
from .openai_chat import OpenAIChatAdapter, OpenAIChatProvider, prepare_openai_stream_body
from .openai_compatible import OpenAICompatibleProvider
from .openai_responses import OpenAIResponsesAdapter, OpenAIResponsesProvider

__all__ = [
    "COMMON_ERRORS",
    "DIMENSIONS",
    "AnthropicAdapter",
    "AnthropicProvider",
    "AzureChatAdapter",
    "AzureOpenAIProvider",
    "ErrorClassifier",
    "ErrorFields",
    "GeminiAdapter",
    "GeminiProvider",
    "HeaderNames",
    "HttpCall",
    "OpenAIChatAdapter",
    "OpenAIChatProvider",
    "OpenAICompatibleProvider",
    "OpenAIResponsesAdapter",
    "OpenAIResponsesProvider",
    "Provider",
    "RateLimitHint",
    "StreamAdapter",
    "classify_http_status",
    "classify_stream_error",
    "get_provider",
    "prepare_openai_stream_body",
    "provider_names",
    "read_hints",
    "register_provider",
    "stream_adapter_for",
    "unregister_provider",
]

# The built-in providers, under the names endpoints configure.
register_provider(OpenAIChatProvider("openai"))
register_provider(OpenAIResponsesProvider("openai-responses"))
register_provider(AnthropicProvider("anthropic"))
register_provider(GeminiProvider("gemini"))
register_provider(OpenAICompatibleProvider("openai-compatible"))
register_provider(AzureOpenAIProvider("azure-openai"))


def stream_adapter_for(provider: str, *, endpoint: str | None = None) -> StreamAdapter:
    """A fresh adapter for one streamed response from the provider registered as
    ``provider`` (:class:`~rakka_trio.ConfigError` for an unknown name); ``endpoint`` is the
    endpoint's name, carried by every error the adapter raises."""
    return get_provider(provider).stream_adapter(endpoint=endpoint)
