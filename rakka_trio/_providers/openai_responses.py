"""OpenAI Responses API (``POST /v1/responses`` with ``stream: true``).

The stream is a sequence of typed events (the JSON ``type`` repeats the SSE event name). It
has no ``[DONE]``: it ends with ``response.completed``, ``response.incomplete`` or
``response.failed``; an ``error`` event reports a failure mid-stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._errors import ContentFiltered
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int
from ._classify import ErrorClassifier
from ._provider import HttpCall, Provider, function_specs, sampling, split_system
from ._ratelimit import RateLimitHint, read_hints
from .openai_chat import OPENAI_RATE_LIMIT_HEADERS

if TYPE_CHECKING:
    from .._request import ChatRequest

__all__ = ["OpenAIResponsesAdapter", "OpenAIResponsesProvider", "responses_usage"]

# Failure codes that mean "refused for policy", not "broken".
_POLICY_CODES = frozenset(
    {"bio_policy", "misalignment_policy_violation", "image_content_policy_violation"}
)
# Text-like streams: event type -> (the stream it belongs to, the chunk field it fills, where
# the part index is); the .done events carry the whole value in their last field.
_TEXT = "response.output_text"
_REFUSAL = "response.refusal"
_SUMMARY = "response.reasoning_summary_text"
_REASONING = "response.reasoning_text"
_DELTAS = {
    f"{_TEXT}.delta": (_TEXT, "text", "content_index"),
    f"{_REFUSAL}.delta": (_REFUSAL, "refusal", "content_index"),
    f"{_SUMMARY}.delta": (_SUMMARY, "thinking", "summary_index"),
    f"{_REASONING}.delta": (_REASONING, "thinking", "content_index"),
}
_DONES = {
    f"{_TEXT}.done": (_TEXT, "text", "content_index", "text"),
    f"{_REFUSAL}.done": (_REFUSAL, "refusal", "content_index", "refusal"),
    f"{_SUMMARY}.done": (_SUMMARY, "thinking", "summary_index", "text"),
    f"{_REASONING}.done": (_REASONING, "thinking", "content_index", "text"),
}
_ARGS = "response.function_call_arguments"
_ARGS_DELTA = f"{_ARGS}.delta"
_ARGS_DONE = f"{_ARGS}.done"
Key = tuple[str, int, int]  # (stream, output_index, part index)


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


def _annotation(ann: Mapping[str, Any]) -> Citation:
    return Citation(
        kind=as_str(ann.get("type")) or "annotation",
        title=as_str(ann.get("title")) or as_str(ann.get("filename")) or None,
        url=as_str(ann.get("url")) or None,
        start_index=opt_int(ann.get("start_index")),
        end_index=opt_int(ann.get("end_index")),
        raw=ann,
    )


class OpenAIResponsesAdapter(StreamAdapter):
    """Responses API events → :class:`StreamChunk`.

    Text, refusal and reasoning (summary or raw) deltas, function-call items and their argument
    deltas, and text annotations become chunk fields; ``response.completed`` /
    ``response.incomplete`` give the finish reason and usage, preceded by one
    ``redacted_thinking`` chunk per reasoning item with ``encrypted_content`` (the final
    response's copy: the server encrypts afresh each time it sends the item);
    ``response.failed`` and ``error`` raise the classified error.

    The ``*.done`` events and ``response.output_item.done`` repeat what the deltas said, but
    some servers (LM Studio) send a value only there: whatever a final value adds to what the
    deltas delivered is emitted then, so text and tool arguments are never lost. Other events
    (lifecycle, hosted-tool progress) carry nothing new and are skipped.
    """

    default_provider = "openai-responses"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        errors: ErrorClassifier | None = None,
    ) -> None:
        super().__init__(provider=provider, endpoint=endpoint, errors=errors)
        self._tools: dict[int, int] = {}  # output_index -> tool-call ordinal
        self._named: set[int] = set()  # output indexes whose call id/name were emitted
        # What the deltas delivered so far, per (field, output_index, part): to complete from
        # the final values of the *.done events without repeating anything.
        # (Pieces, joined only when a final value arrives: concatenating per delta would be
        # quadratic in the length of a long answer.)
        self._sent: dict[Key, list[str]] = {}
        self._encrypted: dict[int, str] = {}  # output_index -> reasoning encrypted_content

    def _tool(self, output_index: int) -> int:
        ordinal = self._tools.get(output_index)
        if ordinal is None:
            ordinal = self._tools[output_index] = len(self._tools)
        return ordinal

    def _piece(self, field: str, key: Key, delta: str, event: SSEEvent) -> list[StreamChunk]:
        """Emit ``delta`` for ``field`` (``text``, ``refusal``, ``thinking`` or ``args``)."""
        if not delta:
            return []
        self._sent.setdefault(key, []).append(delta)
        if field == "args":
            call = ToolCallDelta(self._tool(key[1]), arguments_delta=delta)
            return [StreamChunk(tool_calls=(call,), raw_event=event)]
        if field == "refusal":
            return [StreamChunk(refusal=delta, raw_event=event)]
        if field == "thinking":
            return [StreamChunk(thinking=delta, raw_event=event)]
        return [StreamChunk(text=delta, raw_event=event)]

    def _complete(self, field: str, key: Key, final: Any, event: SSEEvent) -> list[StreamChunk]:
        """``final`` is the whole value: emit what it adds to what was sent."""
        if not isinstance(final, str):
            return []
        sent = "".join(self._sent.get(key, ()))
        if not final.startswith(sent):
            return []  # the deltas disagree with the final value; what was sent stands
        return self._piece(field, key, final[len(sent) :], event)

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one Responses API event."""
        if self.done or event.data == "[DONE]":  # some proxies append a chat-style [DONE]
            return []
        obj = self._json(event)
        kind = as_str(obj.get("type")) or event.event
        oi = as_int(obj.get("output_index"))
        delta = _DELTAS.get(kind)
        if delta is not None:
            stream, field, part = delta
            key = (stream, oi, as_int(obj.get(part)))
            return self._piece(field, key, as_str(obj.get("delta")), event)
        done = _DONES.get(kind)
        if done is not None:
            stream, field, part, final = done
            key = (stream, oi, as_int(obj.get(part)))
            return self._complete(field, key, obj.get(final), event)
        if kind == _ARGS_DELTA:
            return self._piece("args", (_ARGS, oi, 0), as_str(obj.get("delta")), event)
        if kind == _ARGS_DONE:
            return self._complete("args", (_ARGS, oi, 0), obj.get("arguments"), event)
        if kind in ("response.output_item.added", "response.output_item.done"):
            return self._item(oi, as_map(obj.get("item")), kind.endswith("done"), event)
        if kind == "response.output_text.annotation.added":
            citation = _annotation(as_map(obj.get("annotation")))
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

    def _item(
        self, oi: int, item: Mapping[str, Any], done: bool, event: SSEEvent
    ) -> list[StreamChunk]:
        kind = item.get("type")
        out: list[StreamChunk] = []
        if kind == "function_call":
            if oi not in self._named:
                self._named.add(oi)
                call = ToolCallDelta(
                    self._tool(oi),
                    as_str(item.get("call_id")) or as_str(item.get("id")) or None,
                    as_str(item.get("name")) or None,
                )
                out.append(StreamChunk(tool_calls=(call,), raw_event=event))
            out += self._complete("args", (_ARGS, oi, 0), item.get("arguments"), event)
        elif kind == "message" and done:
            for index, raw in enumerate(item.get("content") or ()):
                part = as_map(raw)
                if part.get("type") == "output_text":
                    out += self._complete("text", (_TEXT, oi, index), part.get("text"), event)
                elif part.get("type") == "refusal":
                    key = (_REFUSAL, oi, index)
                    out += self._complete("refusal", key, part.get("refusal"), event)
        elif kind == "reasoning" and done:
            for index, raw in enumerate(item.get("summary") or ()):
                key = (_SUMMARY, oi, index)
                out += self._complete("thinking", key, as_map(raw).get("text"), event)
            for index, raw in enumerate(item.get("content") or ()):
                key = (_REASONING, oi, index)
                out += self._complete("thinking", key, as_map(raw).get("text"), event)
            encrypted = as_str(item.get("encrypted_content"))
            if encrypted:
                self._encrypted[oi] = encrypted  # delivered at the end (see the class doc)
        return out

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
        for oi, item in enumerate(map(as_map, _list(response))):
            encrypted = as_str(item.get("encrypted_content"))
            if item.get("type") == "reasoning" and encrypted:
                self._encrypted[oi] = encrypted
        out = [
            StreamChunk(redacted_thinking=self._encrypted[oi], raw_event=event)
            for oi in sorted(self._encrypted)
        ]
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
        out.append(
            StreamChunk(
                finish_reason=finish, raw_finish_reason=raw, usage=self.usage, raw_event=event
            )
        )
        return out


def _list(response: Mapping[str, Any]) -> list[Any]:
    output = response.get("output")
    return output if isinstance(output, list) else []


class OpenAIResponsesProvider(Provider):
    """The Responses API: ``{base_url}/responses``, ``Authorization: Bearer``,
    ``x-ratelimit-*`` headers; system messages become ``instructions``."""

    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """``POST {base_url}/responses`` with ``input``, ``instructions`` and function tools."""
        system, rest = split_system(request.messages)
        body: dict[str, Any] = {"model": model, "input": rest, "stream": True}
        if system:
            body["instructions"] = system
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = [{"type": "function", **spec} for spec in function_specs(request.tools)]
        sampling(body, request)
        body.update(request.extra)
        return HttpCall(url=f"{base_url.rstrip('/')}/responses", json=body)

    def rate_limit_hints(
        self, headers: Mapping[str, str], *, wall: float | None = None
    ) -> dict[str, RateLimitHint]:
        """OpenAI's ``x-ratelimit-*`` headers."""
        return read_hints(headers, OPENAI_RATE_LIMIT_HEADERS, wall=wall)

    def stream_adapter(self, *, endpoint: str | None = None) -> OpenAIResponsesAdapter:
        """A Responses API adapter."""
        return OpenAIResponsesAdapter(provider=self.name, endpoint=endpoint, errors=self.errors)
