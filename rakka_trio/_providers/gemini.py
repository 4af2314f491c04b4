"""Gemini streaming (``models/{model}:streamGenerateContent?alt=sse``).

Every event is a whole ``GenerateContentResponse`` carrying the next slice of each candidate.
There is no end marker: the stream simply ends (EOF) after the event whose candidate has a
``finishReason``. An EOF before any finish reason therefore means the stream was cut.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int

__all__ = ["GeminiAdapter", "gemini_usage"]

# finishReason values meaning the output was withheld or cut for policy reasons.
_FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
    }
)


def gemini_usage(raw: Mapping[str, Any]) -> Usage:
    """:class:`Usage` from ``usageMetadata``.

    Gemini counts thoughts apart from ``candidatesTokenCount`` and tool-use prompts apart from
    ``promptTokenCount``; both are added back so input/output mean what they mean elsewhere.
    """
    thoughts = as_int(raw.get("thoughtsTokenCount"))
    inp = as_int(raw.get("promptTokenCount")) + as_int(raw.get("toolUsePromptTokenCount"))
    out = as_int(raw.get("candidatesTokenCount")) + thoughts
    total = as_int(raw.get("totalTokenCount")) or inp + out
    return Usage(inp, out, as_int(raw.get("cachedContentTokenCount")), thoughts, total)


class GeminiAdapter(StreamAdapter):
    """``GenerateContentResponse`` events → :class:`StreamChunk`.

    Text parts become ``text`` (``thought: true`` parts become ``thinking``), ``functionCall``
    parts arrive whole and become one :class:`ToolCallDelta` each with the JSON-encoded
    arguments, ``thoughtSignature`` becomes ``thinking_signature``, citation sources become
    ``citations`` and ``usageMetadata`` becomes ``usage`` (when it changed).

    A policy ``finishReason`` (``SAFETY``, ``RECITATION``, ``PROHIBITED_CONTENT``,
    ``BLOCKLIST``, ``SPII`` ...) or ``promptFeedback.blockReason`` makes :meth:`finish` raise
    :class:`~rakka_trio.ContentFiltered`; an ``{"error": ...}`` event raises the classified
    error at once.
    """

    default_provider = "gemini"

    def __init__(self, *, provider: str | None = None, endpoint: str | None = None) -> None:
        super().__init__(provider=provider, endpoint=endpoint)
        self._tool_count = 0
        self._called: set[int] = set()  # candidates that made a function call

    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one streamed ``GenerateContentResponse``."""
        obj = self._json(event)
        if obj.get("error") is not None:
            raise self._error(obj)
        if isinstance(obj.get("responseId"), str):
            self.response_id = obj["responseId"]
        if isinstance(obj.get("modelVersion"), str):
            self.model = obj["modelVersion"]
        block = as_str(as_map(obj.get("promptFeedback")).get("blockReason"))
        if block:
            self._filter(block, f"prompt blocked by the provider (blockReason: {block})")
        chunks = [
            chunk
            for raw in obj.get("candidates") or ()
            if (chunk := self._candidate(as_map(raw), event)) is not None
        ]
        raw_usage = obj.get("usageMetadata")
        if isinstance(raw_usage, Mapping):
            usage = gemini_usage(raw_usage)
            if usage != self.usage:
                self.usage = usage
                if chunks:  # attach to the last chunk of this event rather than add one
                    chunks[-1] = attrs.evolve(chunks[-1], usage=usage)
                else:
                    chunks.append(StreamChunk(usage=usage, raw_event=event))
        return chunks

    def _candidate(self, cand: Mapping[str, Any], event: SSEEvent) -> StreamChunk | None:
        index = as_int(cand.get("index"))
        text: list[str] = []
        thinking: list[str] = []
        signature: list[str] = []
        calls: list[ToolCallDelta] = []
        for raw_part in as_map(cand.get("content")).get("parts") or ():
            part = as_map(raw_part)
            if isinstance(part.get("text"), str):
                (thinking if part.get("thought") is True else text).append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, Mapping):
                calls.append(
                    ToolCallDelta(
                        self._tool_count,
                        as_str(call.get("id")) or None,
                        as_str(call.get("name")) or None,
                        json.dumps(call.get("args") or {}, ensure_ascii=False),
                    )
                )
                self._tool_count += 1
                self._called.add(index)
            if isinstance(part.get("thoughtSignature"), str):
                signature.append(part["thoughtSignature"])
        sources = as_map(cand.get("citationMetadata")).get("citationSources") or ()
        citations = tuple(
            Citation(
                kind="citation_source",
                title=as_str(src.get("title")) or None,
                url=as_str(src.get("uri")) or None,
                start_index=opt_int(src.get("startIndex")),
                end_index=opt_int(src.get("endIndex")),
                raw=src,
            )
            for src in map(as_map, sources)
        )
        raw = as_str(cand.get("finishReason")) or None
        finish = None
        if raw is not None and raw != "FINISH_REASON_UNSPECIFIED":
            self.done = True  # the candidate is complete: EOF after this is a normal end
            if raw in _FILTER_REASONS:
                finish = "content_filter"
                self._filter(raw, f"output stopped by the provider (finishReason: {raw})")
            elif raw == "STOP":
                finish = "tool_calls" if index in self._called else "stop"
            elif raw == "MAX_TOKENS":
                finish = "length"
            else:
                finish = raw.lower()
            self.finish_reason = finish
            self.raw_finish_reason = raw
        chunk = StreamChunk(
            text="".join(text),
            thinking="".join(thinking),
            thinking_signature="".join(signature),
            tool_calls=tuple(calls),
            citations=citations,
            finish_reason=finish,
            raw_finish_reason=raw if finish else None,
            index=index,
            raw_event=event,
        )
        empty = not (chunk.text or chunk.thinking or chunk.thinking_signature or calls or citations)
        return None if empty and finish is None else chunk
