"""Provider-neutral requests and results.

:class:`ChatRequest` uses the OpenAI chat message shape (``{"role", "content"}``, function
tools) because every provider can be fed from it; the endpoint's provider (see
``_providers/``) turns it into its own HTTP call. ``extra`` is merged into the body last, so
any provider-specific field can be set (or overridden) without waiting for a new release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from ._errors import ConfigError
from ._providers import HttpCall, get_provider

__all__ = ["ChatRequest", "Completion", "HttpCall", "ToolCall", "build_http_request"]


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ConfigError([("messages", "must be a non-empty list of {role, content} objects")])
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ConfigError([(f"messages[{i}]", "must be an object with a string 'role'")])
        out.append(dict(message))
    return out


def _optional_positive_int(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError([(attribute.name, f"must be a positive integer, got {value!r}")])


@attrs.frozen(kw_only=True)
class ChatRequest:
    """One chat completion request, in the OpenAI message shape.

    ``messages``: ``[{"role": "system"|"user"|"assistant"|"tool", "content": ...}]``.
    ``tools``: OpenAI function tools (``{"type": "function", "function": {...}}``), translated
    for Anthropic and Gemini. ``model`` defaults to the endpoint's ``model``. ``extra`` is
    merged into the provider's JSON body last. ``idempotent=False`` forbids retries (for
    requests with side effects, e.g. a stored Responses API conversation).
    """

    model: str | None = None
    messages: list[dict[str, Any]] = attrs.field(converter=_messages)
    max_tokens: int | None = attrs.field(default=None, validator=_optional_positive_int)
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    idempotent: bool = True


@attrs.frozen(kw_only=True)
class ToolCall:
    """A complete tool call assembled from its deltas; ``arguments`` is the JSON text.

    ``signature`` is the provider's opaque signature for the call (Gemini
    ``thoughtSignature``), to send back with it on the next turn.
    """

    id: str | None
    name: str | None
    arguments: str
    signature: str | None = None

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded from JSON (raises ``ValueError`` if the model produced bad
        JSON)."""
        return json.loads(self.arguments or "{}")


@attrs.frozen(kw_only=True)
class Completion:
    """The whole result of :meth:`Endpoint.complete` (choice 0 of the stream).

    The text fields are the stream's deltas concatenated (see :class:`StreamChunk`);
    ``redacted_thinking`` holds each encrypted reasoning block, in order, to send back as it
    is; ``citations`` are every source cited, in order. ``endpoint`` is the endpoint that
    produced it and ``attempts`` how many tries it took.
    """

    text: str
    thinking: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage | None
    endpoint: str
    attempts: int
    thinking_signature: str = ""
    redacted_thinking: tuple[str, ...] = ()
    refusal: str = ""
    citations: tuple[Citation, ...] = ()

    @classmethod
    def from_chunks(
        cls, chunks: Sequence[StreamChunk], *, endpoint: str, attempts: int
    ) -> Completion:
        """Assemble a completion from a stream's chunks (choice 0)."""
        text: list[str] = []
        thinking: list[str] = []
        signature: list[str] = []
        refusal: list[str] = []
        redacted: list[str] = []
        citations: list[Citation] = []
        calls: dict[int, list[ToolCallDelta]] = {}
        finish: str | None = None
        usage: Usage | None = None
        for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.index != 0:
                continue
            text.append(chunk.text)
            thinking.append(chunk.thinking)
            signature.append(chunk.thinking_signature)
            refusal.append(chunk.refusal)
            if chunk.redacted_thinking:
                redacted.append(chunk.redacted_thinking)
            citations.extend(chunk.citations)
            for delta in chunk.tool_calls:
                calls.setdefault(delta.index, []).append(delta)
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
        tool_calls = tuple(
            ToolCall(
                id=next((d.id for d in deltas if d.id), None),
                name=next((d.name for d in deltas if d.name), None),
                arguments="".join(d.arguments_delta for d in deltas),
                signature=next((d.signature for d in deltas if d.signature), None),
            )
            for _, deltas in sorted(calls.items())
        )
        return cls(
            text="".join(text),
            thinking="".join(thinking),
            tool_calls=tool_calls,
            finish_reason=finish,
            usage=usage,
            endpoint=endpoint,
            attempts=attempts,
            thinking_signature="".join(signature),
            redacted_thinking=tuple(redacted),
            refusal="".join(refusal),
            citations=tuple(citations),
        )


def build_http_request(
    provider: str,
    base_url: str,
    model: str,
    request: ChatRequest,
    *,
    options: Mapping[str, str] | None = None,
) -> HttpCall:
    """The streaming HTTP call that performs ``request`` against the provider registered as
    ``provider`` at ``base_url`` (``options``: the endpoint's ``provider_options``)."""
    return get_provider(provider).build_request(
        request, base_url=base_url, model=model, options=options or {}
    )
