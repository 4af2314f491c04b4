"""Provider stream adapters: server-sent events in, provider-neutral stream chunks out.

One module per provider wire format. The adapters are pure (no I/O) so they can be tested
against recorded streams and reused by any transport.
"""

from __future__ import annotations

from .._errors import ConfigError
from ._base import StreamAdapter
from .anthropic import AnthropicAdapter
from .gemini import GeminiAdapter
from .openai_chat import OpenAIChatAdapter, prepare_openai_stream_body
from .openai_responses import OpenAIResponsesAdapter

__all__ = [
    "PROVIDERS",
    "AnthropicAdapter",
    "GeminiAdapter",
    "OpenAIChatAdapter",
    "OpenAIResponsesAdapter",
    "StreamAdapter",
    "prepare_openai_stream_body",
    "stream_adapter_for",
]

PROVIDERS = ("openai", "openai-compatible", "openai-responses", "anthropic", "gemini")
"""Provider names :func:`stream_adapter_for` understands."""


def stream_adapter_for(provider: str, *, endpoint: str | None = None) -> StreamAdapter:
    """A fresh adapter for one streamed response from ``provider``.

    ``endpoint`` is the endpoint's name, carried by every error the adapter raises.
    ``"openai-compatible"`` differs from ``"openai"`` in accepting a stream that ends after a
    finish reason without ``[DONE]`` (several compatible servers omit it).
    """
    if provider == "openai":
        return OpenAIChatAdapter(provider=provider, endpoint=endpoint)
    if provider == "openai-compatible":
        return OpenAIChatAdapter(provider=provider, endpoint=endpoint, require_done=False)
    if provider == "openai-responses":
        return OpenAIResponsesAdapter(provider=provider, endpoint=endpoint)
    if provider == "anthropic":
        return AnthropicAdapter(provider=provider, endpoint=endpoint)
    if provider == "gemini":
        return GeminiAdapter(provider=provider, endpoint=endpoint)
    raise ConfigError(
        [("provider", f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")]
    )
