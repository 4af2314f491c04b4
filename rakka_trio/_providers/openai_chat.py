"""OpenAI chat completions (``POST /v1/chat/completions`` with ``stream: true``).

The adapter also serves OpenAI-compatible servers (vLLM, LiteLLM, Ollama, DeepSeek ...), which
share the chunk shape and add a few fields (``reasoning_content``) and error forms
(``{"object": "error"}``, ``event: error``); see ``openai_compatible.py`` and
``azure_openai.py`` for the providers built on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._errors import StreamError
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int
from ._classify import ErrorClassifier
from ._provider import HttpCall, Provider, sampling
from ._ratelimit import HeaderNames, RateLimitHint, read_hints

if TYPE_CHECKING:
    from .._request import ChatRequest

__all__ = [
    "OPENAI_RATE_LIMIT_HEADERS",
    "OpenAIChatAdapter",
    "OpenAIChatProvider",
    "chat_body",
    "openai_usage",
    "prepare_openai_stream_body",
]

OPENAI_RATE_LIMIT_HEADERS = (
    HeaderNames(
        "requests",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    HeaderNames(
        "tokens",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ),
)
"""OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers."""

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def prepare_openai_stream_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a chat completions request body set up for streaming with usage.

    Sets ``stream: true`` and ``stream_options.include_usage: true`` (without usage the
    limiter cannot settle what a request really cost), keeping every other field and every
    other stream option the caller set. The input is not modified.
    """
    out = dict(body)
    out["stream"] = True
    options = dict(as_map(out.get("stream_options")))
    options["include_usage"] = True
    out["stream_options"] = options
    return out


def openai_usage(raw: Mapping[str, Any]) -> Usage:
    """:class:`Usage` from an OpenAI chat ``usage`` object."""
    prompt = as_int(raw.get("prompt_tokens"))
    completion = as_int(raw.get("completion_tokens"))
    cached = as_int(as_map(raw.get("prompt_tokens_details")).get("cached_tokens"))
    if not cached:  # DeepSeek's name for the same thing
        cached = as_int(raw.get("prompt_cache_hit_tokens"))
    reasoning = as_int(as_map(raw.get("completion_tokens_details")).get("reasoning_tokens"))
    total = as_int(raw.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, cached, reasoning, total)


def _citations(delta: Mapping[str, Any]) -> tuple[Citation, ...]:
    out = []
    for item in delta.get("annotations") or ():
        ann = as_map(item)
        kind = as_str(ann.get("type")) or "annotation"
        body = as_map(ann.get(kind))
        out.append(
            Citation(
                kind=kind,
                title=as_str(body.get("title")) or None,
                url=as_str(body.get("url")) or None,
                start_index=opt_int(body.get("start_index")),
                end_index=opt_int(body.get("end_index")),
                raw=ann,
            )
        )
    return tuple(out)


def _tool_calls(delta: Mapping[str, Any]) -> tuple[ToolCallDelta, ...]:
    out = []
    for raw_call in delta.get("tool_calls") or ():
        call = as_map(raw_call)
        fn = as_map(call.get("function"))
        out.append(
            ToolCallDelta(
                as_int(call.get("index")),
                as_str(call.get("id")) or None,
                as_str(fn.get("name")) or None,
                as_str(fn.get("arguments")),
            )
        )
    legacy = delta.get("function_call")  # pre-tools API: one call, no id
    if isinstance(legacy, Mapping):
        out.append(
            ToolCallDelta(
                0, None, as_str(legacy.get("name")) or None, as_str(legacy.get("arguments"))
            )
        )
    return tuple(out)


class OpenAIChatAdapter(StreamAdapter):
    """Chat completion chunks → :class:`StreamChunk`.

    The stream ends with ``data: [DONE]``; with ``require_done=False`` (for OpenAI-compatible
    servers that omit it) a stream that reached a ``finish_reason`` also counts as complete.
    ``{"error": {...}}`` chunks (and ``event: error``) raise the classified error. The usage
    chunk requested by ``stream_options.include_usage`` (empty ``choices``) yields a chunk with
    only ``usage`` set. ``reasoning_fields`` are the delta fields read as ``thinking``, first
    non-empty wins (OpenAI itself streams none; compatible servers use ``reasoning_content``
    or ``reasoning``).
    """

    default_provider = "openai"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        errors: ErrorClassifier | None = None,
        require_done: bool = True,
        reasoning_fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__(provider=provider, endpoint=endpoint, errors=errors)
        self.require_done = require_done
        self.reasoning_fields = reasoning_fields

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one chunk event."""
        if self.done:
            return []
        if event.data == "[DONE]":
            self.done = True
            return []
        if event.event == "error":
            try:
                payload = self._json(event)
            except StreamError:  # a plain-text error message
                payload = {"error": {"message": event.data}}
            raise self._error(payload)
        obj = self._json(event)
        if obj.get("error") is not None or obj.get("object") == "error":
            raise self._error(obj)
        if isinstance(obj.get("id"), str):
            self.response_id = obj["id"]
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        self._inspect(obj)
        chunks: list[StreamChunk] = []
        for raw_choice in obj.get("choices") or ():
            chunk = self._choice(as_map(raw_choice), event)
            if chunk is not None:
                chunks.append(chunk)
        raw_usage = obj.get("usage")
        if raw_usage is not None and isinstance(raw_usage, Mapping):
            self.usage = openai_usage(raw_usage)
            chunks.append(StreamChunk(usage=self.usage, raw_event=event))
        return chunks

    def _choice(self, choice: Mapping[str, Any], event: SSEEvent) -> StreamChunk | None:
        delta = as_map(choice.get("delta"))
        # Most deltas carry only text: the rarer fields are read only when present.
        tool_calls = _tool_calls(delta) if "tool_calls" in delta or "function_call" in delta else ()
        raw_finish = as_str(choice.get("finish_reason")) or None
        finish = None
        if raw_finish is not None:
            finish = _FINISH.get(raw_finish, raw_finish.lower())
            self.finish_reason = finish
            self.raw_finish_reason = raw_finish
            if finish == "content_filter":
                self._filter(self.filter_reason(choice), "output stopped by the content filter")
        thinking = ""
        for name in self.reasoning_fields:
            thinking = as_str(delta.get(name))
            if thinking:
                break
        text = as_str(delta.get("content"))
        refusal = as_str(delta.get("refusal"))
        citations = _citations(delta) if "annotations" in delta else ()
        if not (text or thinking or refusal or tool_calls or citations or finish):
            return None  # e.g. the opening {"role": "assistant", "content": ""} delta
        return StreamChunk(
            text=text,
            thinking=thinking,
            refusal=refusal,
            tool_calls=tool_calls,
            citations=citations,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            index=as_int(choice.get("index")),
            raw_event=event,
        )

    def finish(self) -> list[StreamChunk]:
        """End of stream: complete only after ``[DONE]`` (or a finish reason, if lenient)."""
        if not self.require_done and self.finish_reason is not None:
            self.done = True
        return super().finish()

    # --- hooks for providers built on this adapter -------------------------------------------

    def _inspect(self, chunk: Mapping[str, Any]) -> None:
        """Look at each chunk object before its choices are read (e.g. filter results)."""

    def filter_reason(self, choice: Mapping[str, Any]) -> str:
        """The ``ContentFiltered.reason`` for a choice that finished with ``content_filter``."""
        return "content_filter"


def chat_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The chat completions body for ``request``, streaming with usage, extras merged."""
    body: dict[str, Any] = {"model": model, "messages": request.messages}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.tools:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.stop:
        body["stop"] = request.stop
    sampling(body, request)
    body.update(request.extra)
    # After the extras: streaming with usage is what the limiter and breaker rely on.
    return prepare_openai_stream_body(body)


class OpenAIChatProvider(Provider):
    """OpenAI chat completions: ``{base_url}/chat/completions``, ``Authorization: Bearer``,
    ``x-ratelimit-*`` headers, a stream that must end with ``[DONE]``."""

    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """``POST {base_url}/chat/completions`` with the chat body."""
        return HttpCall(
            url=f"{base_url.rstrip('/')}/chat/completions", json=chat_body(request, model)
        )

    def rate_limit_hints(
        self, headers: Mapping[str, str], *, wall: float | None = None
    ) -> dict[str, RateLimitHint]:
        """OpenAI's ``x-ratelimit-*`` headers."""
        return read_hints(headers, OPENAI_RATE_LIMIT_HEADERS, wall=wall)

    def stream_adapter(self, *, endpoint: str | None = None) -> OpenAIChatAdapter:
        """A strict chat completions adapter."""
        return OpenAIChatAdapter(provider=self.name, endpoint=endpoint, errors=self.errors)
