"""OpenAI Responses API streaming (``POST /v1/responses`` with ``stream: true``).

The stream is a sequence of typed events (the JSON ``type`` repeats the SSE event name). It
has no ``[DONE]``: it ends with ``response.completed``, ``response.incomplete`` or
``response.failed``; an ``error`` event reports a failure mid-stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._errors import ContentFiltered
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int

__all__ = ["OpenAIResponsesAdapter", "responses_usage"]

# Failure codes that mean "refused for policy", not "broken".
_POLICY_CODES = frozenset(
    {"bio_policy", "misalignment_policy_violation", "image_content_policy_violation"}
)
_THINKING_EVENTS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)


def responses_usage(raw: Mapping[str, Any]) -> Usage:
    """:class:`Usage` from a Responses API ``usage`` object."""
    inp = as_int(raw.get("input_tokens"))
    out = as_int(raw.get("output_tokens"))
    return Usage(
        inp,
        out,
        as_int(as_map(raw.get("input_tokens_details")).get("cached_tokens")),
        as_int(as_map(raw.get("output_tokens_details")).get("reasoning_tokens")),
        as_int(raw.get("total_tokens")) or inp + out,
    )


class OpenAIResponsesAdapter(StreamAdapter):
    """Responses API events → :class:`StreamChunk`.

    Text, refusal and reasoning (summary or raw) deltas, function-call items and their argument
    deltas, and text annotations become chunk fields; ``response.completed`` /
    ``response.incomplete`` give the finish reason and usage; ``response.failed`` and ``error``
    raise the classified error. Other events (lifecycle, ``*.done`` repeats, hosted-tool
    progress) carry nothing new and are skipped.
    """

    default_provider = "openai"

    def __init__(self, *, provider: str | None = None, endpoint: str | None = None) -> None:
        super().__init__(provider=provider, endpoint=endpoint)
        self._tools: dict[int, int] = {}  # output_index -> tool-call ordinal

    def _tool(self, output_index: int) -> int:
        ordinal = self._tools.get(output_index)
        if ordinal is None:
            ordinal = self._tools[output_index] = len(self._tools)
        return ordinal

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one Responses API event."""
        if self.done or event.data == "[DONE]":  # some proxies append a chat-style [DONE]
            return []
        obj = self._json(event)
        kind = as_str(obj.get("type")) or event.event
        if kind == "response.output_text.delta":
            text = as_str(obj.get("delta"))
            return [StreamChunk(text=text, raw_event=event)] if text else []
        if kind in _THINKING_EVENTS:
            thinking = as_str(obj.get("delta"))
            return [StreamChunk(thinking=thinking, raw_event=event)] if thinking else []
        if kind == "response.refusal.delta":
            refusal = as_str(obj.get("delta"))
            return [StreamChunk(refusal=refusal, raw_event=event)] if refusal else []
        if kind == "response.function_call_arguments.delta":
            call = ToolCallDelta(
                self._tool(as_int(obj.get("output_index"))),
                arguments_delta=as_str(obj.get("delta")),
            )
            return [StreamChunk(tool_calls=(call,), raw_event=event)]
        if kind == "response.output_item.added":
            item = as_map(obj.get("item"))
            if item.get("type") != "function_call":
                return []
            call = ToolCallDelta(
                self._tool(as_int(obj.get("output_index"))),
                as_str(item.get("call_id")) or as_str(item.get("id")) or None,
                as_str(item.get("name")) or None,
                as_str(item.get("arguments")),
            )
            return [StreamChunk(tool_calls=(call,), raw_event=event)]
        if kind == "response.output_text.annotation.added":
            ann = as_map(obj.get("annotation"))
            citation = Citation(
                kind=as_str(ann.get("type")) or "annotation",
                title=as_str(ann.get("title")) or as_str(ann.get("filename")) or None,
                url=as_str(ann.get("url")) or None,
                start_index=opt_int(ann.get("start_index")),
                end_index=opt_int(ann.get("end_index")),
                raw=ann,
            )
            return [StreamChunk(citations=(citation,), raw_event=event)]
        if kind in ("response.created", "response.in_progress", "response.queued"):
            self._note_response(as_map(obj.get("response")))
            return []
        if kind == "error":
            self.done = True
            raise self._error(obj)
        if kind == "response.failed":
            self.done = True
            response = as_map(obj.get("response"))
            self._note_response(response)
            error = as_map(response.get("error"))
            code = as_str(error.get("code"))
            if code in _POLICY_CODES:
                raise ContentFiltered(
                    as_str(error.get("message")) or code,
                    reason=code,
                    code=code,
                    provider=self.provider,
                    endpoint=self.endpoint,
                )
            raise self._error({"error": error or {"message": "response failed"}})
        if kind in ("response.completed", "response.incomplete"):
            return self._end(kind, as_map(obj.get("response")), event)
        return []

    def _note_response(self, response: Mapping[str, Any]) -> None:
        if isinstance(response.get("id"), str):
            self.response_id = response["id"]
        if isinstance(response.get("model"), str):
            self.model = response["model"]

    def _end(self, kind: str, response: Mapping[str, Any], event: SSEEvent) -> list[StreamChunk]:
        self.done = True
        self._note_response(response)
        raw_usage = response.get("usage")
        if isinstance(raw_usage, Mapping):
            self.usage = responses_usage(raw_usage)
        if kind == "response.incomplete":
            raw = as_str(as_map(response.get("incomplete_details")).get("reason")) or "incomplete"
            finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(
                raw, raw
            )
            if finish == "content_filter":
                self._filter(raw, "output stopped by the provider's content filter")
        else:
            raw = "completed"
            calls = any(as_map(item).get("type") == "function_call" for item in _list(response))
            finish = "tool_calls" if calls or self._tools else "stop"
        self.finish_reason = finish
        self.raw_finish_reason = raw
        return [
            StreamChunk(
                finish_reason=finish, raw_finish_reason=raw, usage=self.usage, raw_event=event
            )
        ]


def _list(response: Mapping[str, Any]) -> list[Any]:
    output = response.get("output")
    return output if isinstance(output, list) else []
