"""OpenAI chat completions streaming (``POST /v1/chat/completions`` with ``stream: true``).

Also used for OpenAI-compatible servers (vLLM, LiteLLM, Ollama, DeepSeek ...), which share the
chunk shape and add a few fields (``reasoning_content``) and error forms (``{"object":
"error"}``, ``event: error``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._errors import StreamError
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int

__all__ = ["OpenAIChatAdapter", "openai_usage", "prepare_openai_stream_body"]

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


class OpenAIChatAdapter(StreamAdapter):
    """Chat completion chunks → :class:`StreamChunk`.

    The stream ends with ``data: [DONE]``; with ``require_done=False`` (for OpenAI-compatible
    servers that omit it) a stream that reached a ``finish_reason`` also counts as complete.
    ``{"error": {...}}`` chunks (and ``event: error``) raise the classified error. The usage
    chunk requested by ``stream_options.include_usage`` (empty ``choices``) yields a chunk with
    only ``usage`` set.
    """

    default_provider = "openai"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        require_done: bool = True,
    ) -> None:
        super().__init__(provider=provider, endpoint=endpoint)
        self.require_done = require_done

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
        chunks: list[StreamChunk] = []
        for raw_choice in obj.get("choices") or ():
            chunk = self._choice(as_map(raw_choice), event)
            if chunk is not None:
                chunks.append(chunk)
        raw_usage = obj.get("usage")
        if isinstance(raw_usage, Mapping):
            self.usage = openai_usage(raw_usage)
            chunks.append(StreamChunk(usage=self.usage, raw_event=event))
        return chunks

    def _choice(self, choice: Mapping[str, Any], event: SSEEvent) -> StreamChunk | None:
        delta = as_map(choice.get("delta"))
        tool_calls = []
        for raw_call in delta.get("tool_calls") or ():
            call = as_map(raw_call)
            fn = as_map(call.get("function"))
            tool_calls.append(
                ToolCallDelta(
                    as_int(call.get("index")),
                    as_str(call.get("id")) or None,
                    as_str(fn.get("name")) or None,
                    as_str(fn.get("arguments")),
                )
            )
        legacy = delta.get("function_call")  # pre-tools API: one call, no id
        if isinstance(legacy, Mapping):
            tool_calls.append(
                ToolCallDelta(
                    0, None, as_str(legacy.get("name")) or None, as_str(legacy.get("arguments"))
                )
            )
        raw_finish = as_str(choice.get("finish_reason")) or None
        finish = None
        if raw_finish is not None:
            finish = _FINISH.get(raw_finish, raw_finish.lower())
            self.finish_reason = finish
            self.raw_finish_reason = raw_finish
            if finish == "content_filter":
                self._filter(raw_finish, "output stopped by the provider's content filter")
        chunk = StreamChunk(
            text=as_str(delta.get("content")),
            # reasoning_content: DeepSeek, vLLM, LiteLLM; reasoning: OpenRouter, Ollama
            thinking=as_str(delta.get("reasoning_content")) or as_str(delta.get("reasoning")),
            refusal=as_str(delta.get("refusal")),
            tool_calls=tuple(tool_calls),
            citations=_citations(delta),
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            index=as_int(choice.get("index")),
            raw_event=event,
        )
        if not (
            chunk.text
            or chunk.thinking
            or chunk.refusal
            or chunk.tool_calls
            or chunk.citations
            or finish
        ):
            return None  # e.g. the opening {"role": "assistant", "content": ""} delta
        return chunk

    def finish(self) -> list[StreamChunk]:
        """End of stream: complete only after ``[DONE]`` (or a finish reason, if lenient)."""
        if not self.require_done and self.finish_reason is not None:
            self.done = True
        return super().finish()
