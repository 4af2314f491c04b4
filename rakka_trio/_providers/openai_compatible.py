"""OpenAI-compatible servers (vLLM, DeepSeek, Groq, OpenRouter, xAI, LiteLLM, Ollama ...).

They speak the chat completions wire format with a few differences this profile allows for:

* reasoning text arrives in a delta field OpenAI does not have: ``reasoning_content``
  (DeepSeek, vLLM, xAI, LiteLLM) or ``reasoning`` (Groq, OpenRouter, Ollama);
* some servers end the stream after the finish reason without ``data: [DONE]``;
* errors may come as ``{"object": "error", ...}`` chunks or an ``event: error`` event.
"""

from __future__ import annotations

from .openai_chat import OpenAIChatAdapter, OpenAIChatProvider

__all__ = ["REASONING_FIELDS", "OpenAICompatibleProvider"]

REASONING_FIELDS = ("reasoning_content", "reasoning")
"""The delta fields compatible servers stream reasoning text in, in order of preference."""


class OpenAICompatibleProvider(OpenAIChatProvider):
    """Chat completions as compatible servers speak it (see the module doc).

    The request, auth (``Authorization: Bearer``) and rate-limit headers (OpenAI's
    ``x-ratelimit-*``, which Groq, DeepSeek and others copy) are OpenAI's; the stream adapter
    reads ``reasoning_content`` / ``reasoning`` as thinking and accepts a stream ended by a
    finish reason alone.
    """

    def stream_adapter(self, *, endpoint: str | None = None) -> OpenAIChatAdapter:
        """A lenient chat adapter reading the reasoning fields."""
        return OpenAIChatAdapter(
            provider=self.name,
            endpoint=endpoint,
            errors=self.errors,
            require_done=False,
            reasoning_fields=REASONING_FIELDS,
        )
