"""Anthropic Messages (``POST /v1/messages`` with ``"stream": true``).

Event flow: ``message_start``, then per content block ``content_block_start``,
``content_block_delta``\\* and ``content_block_stop``, then ``message_delta`` (stop reason and
cumulative usage) and ``message_stop``. ``ping`` may appear anywhere; ``error`` reports a
failure (``overloaded_error``, ``rate_limit_error``, ``api_error`` ...) inside the 200 stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int
from ._classify import ErrorClassifier
from ._provider import HttpCall, Provider, function_specs, join_versioned, sampling, split_system
from ._ratelimit import HeaderNames, RateLimitHint, read_hints

if TYPE_CHECKING:
    from .._credentials import Secret
    from .._request import ChatRequest

__all__ = ["AnthropicAdapter", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens; other providers don't
_RATE_LIMIT_HEADERS = tuple(
    HeaderNames(
        dimension,
        f"anthropic-ratelimit-{infix}-limit",
        f"anthropic-ratelimit-{infix}-remaining",
        f"anthropic-ratelimit-{infix}-reset",
    )
    for dimension, infix in (
        ("requests", "requests"),
        ("tokens", "tokens"),
        ("input_tokens", "input-tokens"),
        ("output_tokens", "output-tokens"),
    )
)

_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "thinking_tokens",
)


def _citation(raw: Mapping[str, Any]) -> Citation:
    def first_int(*keys: str) -> int | None:
        for key in keys:
            value = opt_int(raw.get(key))
            if value is not None:
                return value
        return None

    return Citation(
        kind=as_str(raw.get("type")) or "citation",
        cited_text=as_str(raw.get("cited_text")) or None,
        title=as_str(raw.get("document_title")) or as_str(raw.get("title")) or None,
        url=as_str(raw.get("url")) or as_str(raw.get("source")) or None,
        start_index=first_int("start_char_index", "start_page_number", "start_block_index"),
        end_index=first_int("end_char_index", "end_page_number", "end_block_index"),
        raw=raw,
    )


class AnthropicAdapter(StreamAdapter):
    """Messages stream events → :class:`StreamChunk`.

    Deltas: ``text_delta`` → ``text``, ``thinking_delta`` → ``thinking``, ``signature_delta``
    → ``thinking_signature``, ``citations_delta`` → ``citations``, ``input_json_delta`` of a
    ``tool_use`` block → ``tool_calls`` (server-side tool blocks are not the caller's to run
    and are skipped); a ``redacted_thinking`` block becomes one ``redacted_thinking`` chunk.
    Usage starts from ``message_start`` (input and cache tokens; delivered as a usage chunk at
    once, so a stream that fails midway still reports it) and is updated by each cumulative
    ``message_delta``; ``usage.output_tokens_details.thinking_tokens`` is the reasoning part.
    The end marker is ``message_stop``.
    """

    default_provider = "anthropic"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        errors: ErrorClassifier | None = None,
    ) -> None:
        super().__init__(provider=provider, endpoint=endpoint, errors=errors)
        self._counts: dict[str, int] = dict.fromkeys(_USAGE_FIELDS, 0)
        self._tools: dict[int, int] = {}  # content block index -> tool-call ordinal

    def _update_usage(self, raw: Any) -> Usage:
        counts = self._counts
        usage = as_map(raw)
        details = as_map(usage.get("output_tokens_details"))
        for key, value in (*usage.items(), *details.items()):
            if key in counts and isinstance(value, int) and not isinstance(value, bool):
                counts[key] = value  # message_delta counts are cumulative: replace, never add
        cache_read = counts["cache_read_input_tokens"]
        cache_write = counts["cache_creation_input_tokens"]
        inp = counts["input_tokens"] + cache_read + cache_write
        out = counts["output_tokens"]
        thinking = counts["thinking_tokens"]
        self.usage = Usage(
            inp, out, cache_read, thinking, inp + out, cache_creation_tokens=cache_write
        )
        return self.usage

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one Messages stream event."""
        if self.done:
            return []
        obj = self._json(event)
        kind = as_str(obj.get("type")) or event.event
        if kind == "content_block_delta":
            return self._delta(as_int(obj.get("index")), as_map(obj.get("delta")), event)
        if kind == "ping" or kind == "content_block_stop":
            return []
        if kind == "error":
            self.done = True
            raise self._error(obj)
        if kind == "content_block_start":
            return self._block_start(
                as_int(obj.get("index")), as_map(obj.get("content_block")), event
            )
        if kind == "message_start":
            message = as_map(obj.get("message"))
            if isinstance(message.get("id"), str):
                self.response_id = message["id"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            usage = self._update_usage(message.get("usage"))
            return [StreamChunk(usage=usage, raw_event=event)]
        if kind == "message_delta":
            usage = self._update_usage(obj.get("usage"))
            raw = as_str(as_map(obj.get("delta")).get("stop_reason")) or None
            finish = None
            if raw is not None:
                finish = _STOP.get(raw, raw.lower())
                self.finish_reason = finish
                self.raw_finish_reason = raw
                if finish == "content_filter":
                    self._filter(raw, "the model declined to continue (stop_reason: refusal)")
            return [
                StreamChunk(
                    finish_reason=finish, raw_finish_reason=raw, usage=usage, raw_event=event
                )
            ]
        if kind == "message_stop":
            self.done = True
        return []  # unknown event types are skipped, as the API's versioning policy asks

    def _block_start(
        self, index: int, block: Mapping[str, Any], event: SSEEvent
    ) -> list[StreamChunk]:
        kind = block.get("type")
        if kind == "tool_use":
            ordinal = self._tools[index] = len(self._tools)
            call = ToolCallDelta(
                ordinal, as_str(block.get("id")) or None, as_str(block.get("name")) or None
            )
            return [StreamChunk(tool_calls=(call,), raw_event=event)]
        if kind == "text":
            text = as_str(block.get("text"))
            citations = tuple(_citation(as_map(c)) for c in block.get("citations") or ())
            if text or citations:
                return [StreamChunk(text=text, citations=citations, raw_event=event)]
        elif kind == "thinking":
            thinking = as_str(block.get("thinking"))
            signature = as_str(block.get("signature"))
            if thinking or signature:
                return [
                    StreamChunk(thinking=thinking, thinking_signature=signature, raw_event=event)
                ]
        elif kind == "redacted_thinking":
            data = as_str(block.get("data"))
            if data:
                return [StreamChunk(redacted_thinking=data, raw_event=event)]
        return []

    def _delta(self, index: int, delta: Mapping[str, Any], event: SSEEvent) -> list[StreamChunk]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [StreamChunk(text=as_str(delta.get("text")), raw_event=event)]
        if kind == "input_json_delta":
            ordinal = self._tools.get(index)
            if ordinal is None:  # input of a server-side tool (web search ...): not ours to run
                return []
            call = ToolCallDelta(ordinal, arguments_delta=as_str(delta.get("partial_json")))
            return [StreamChunk(tool_calls=(call,), raw_event=event)]
        if kind == "thinking_delta":
            return [StreamChunk(thinking=as_str(delta.get("thinking")), raw_event=event)]
        if kind == "signature_delta":
            signature = as_str(delta.get("signature"))
            return [StreamChunk(thinking_signature=signature, raw_event=event)]
        if kind == "citations_delta":
            citation = _citation(as_map(delta.get("citation")))
            return [StreamChunk(citations=(citation,), raw_event=event)]
        return []


class AnthropicProvider(Provider):
    """Anthropic Messages: ``{base_url}/v1/messages``, ``x-api-key`` and ``anthropic-version``
    headers, ``anthropic-ratelimit-*`` headers; system messages become ``system``, function
    tools become ``input_schema`` tools, ``max_tokens`` defaults to 1024 (it is required)."""

    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """``POST {base_url}/v1/messages`` (``/v1`` added unless the base URL has it)."""
        system, rest = split_system(request.messages)
        body: dict[str, Any] = {
            "model": model,
            "messages": rest,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [
                {
                    "name": s["name"],
                    "description": s["description"],
                    "input_schema": s["parameters"],
                }
                for s in function_specs(request.tools)
            ]
        if request.stop:
            body["stop_sequences"] = request.stop
        sampling(body, request)
        body.update(request.extra)
        return HttpCall(url=join_versioned(base_url, versioned="v1", path="/messages"), json=body)

    def auth_headers(self, secret: Secret | None, *, options: Mapping[str, str]) -> dict[str, str]:
        """``anthropic-version`` always; ``x-api-key`` with a credential."""
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if secret is not None:
            headers["x-api-key"] = secret.get_secret_value()
        return headers

    def rate_limit_hints(
        self, headers: Mapping[str, str], *, wall: float | None = None
    ) -> dict[str, RateLimitHint]:
        """``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*``."""
        return read_hints(headers, _RATE_LIMIT_HEADERS, wall=wall)

    def stream_adapter(self, *, endpoint: str | None = None) -> AnthropicAdapter:
        """A Messages stream adapter."""
        return AnthropicAdapter(provider=self.name, endpoint=endpoint, errors=self.errors)
