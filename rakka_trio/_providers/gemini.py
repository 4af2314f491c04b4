"""Gemini (``models/{model}:streamGenerateContent?alt=sse``).

Every event is a whole ``GenerateContentResponse`` carrying the next slice of each candidate.
There is no end marker: the stream simply ends (EOF) after the event whose candidate has a
``finishReason``. An EOF before any finish reason therefore means the stream was cut.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._chunks import Citation, StreamChunk, ToolCallDelta, Usage
from .._sse import SSEEvent
from ._base import StreamAdapter, as_int, as_map, as_str, opt_int
from ._classify import ErrorClassifier
from ._provider import HttpCall, Provider, function_specs, join_versioned, split_system

if TYPE_CHECKING:
    from .._credentials import Secret
    from .._request import ChatRequest

__all__ = ["GeminiAdapter", "GeminiProvider", "gemini_usage"]

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
    arguments, ``thoughtSignature`` becomes ``thinking_signature`` (on a ``functionCall`` part:
    that call's ``signature``), citation sources and grounding supports (``google_search``)
    become ``citations`` and ``usageMetadata`` becomes ``usage`` (when it changed).

    A policy ``finishReason`` (``SAFETY``, ``RECITATION``, ``PROHIBITED_CONTENT``,
    ``BLOCKLIST``, ``SPII`` ...) or ``promptFeedback.blockReason`` makes :meth:`finish` raise
    :class:`~rakka_trio.ContentFiltered`; an ``{"error": ...}`` event raises the classified
    error at once.
    """

    default_provider = "gemini"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        errors: ErrorClassifier | None = None,
    ) -> None:
        super().__init__(provider=provider, endpoint=endpoint, errors=errors)
        self._tool_count = 0
        self._called: set[int] = set()  # candidates that made a function call
        self._grounded: set[tuple[Any, ...]] = set()  # grounding citations already emitted

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
            part_signature = as_str(part.get("thoughtSignature")) or None
            call = part.get("functionCall")
            if isinstance(call, Mapping):
                calls.append(
                    ToolCallDelta(
                        self._tool_count,
                        as_str(call.get("id")) or None,
                        as_str(call.get("name")) or None,
                        json.dumps(call.get("args") or {}, ensure_ascii=False),
                        signature=part_signature,  # goes back in the same part as the call
                    )
                )
                self._tool_count += 1
                self._called.add(index)
            elif part_signature is not None:
                signature.append(part_signature)
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
        ) + self._grounding(as_map(cand.get("groundingMetadata")))
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

    def _grounding(self, meta: Mapping[str, Any]) -> tuple[Citation, ...]:
        """One citation per (supported text segment, web source it cites), each only once
        (the metadata may be repeated on later events)."""
        sources = [as_map(as_map(c).get("web")) for c in meta.get("groundingChunks") or ()]
        out: list[Citation] = []
        for raw in meta.get("groundingSupports") or ():
            support = as_map(raw)
            segment = as_map(support.get("segment"))
            for number in support.get("groundingChunkIndices") or ():
                if not isinstance(number, int) or not 0 <= number < len(sources):
                    continue
                web = sources[number]
                start, end = opt_int(segment.get("startIndex")), opt_int(segment.get("endIndex"))
                key = (start, end, number, as_str(web.get("uri")))
                if key in self._grounded:
                    continue
                self._grounded.add(key)
                out.append(
                    Citation(
                        kind="grounding",
                        cited_text=as_str(segment.get("text")) or None,
                        title=as_str(web.get("title")) or None,
                        url=as_str(web.get("uri")) or None,
                        start_index=start,
                        end_index=end,
                        raw={"segment": segment, "source": web},
                    )
                )
        return tuple(out)


class GeminiProvider(Provider):
    """Gemini API: ``{base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse``,
    ``x-goog-api-key``; messages become ``contents`` (assistant → ``model``), system messages
    ``systemInstruction``, sampling and ``max_tokens`` go to ``generationConfig``, function
    tools to ``functionDeclarations``. No rate-limit headers."""

    def build_request(
        self, request: ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> HttpCall:
        """``POST .../models/{model}:streamGenerateContent?alt=sse`` (``/v1beta`` added
        unless the base URL has a version)."""
        system, rest = split_system(request.messages)
        body: dict[str, Any] = {
            "contents": [
                {
                    "role": "model" if m["role"] == "assistant" else "user",
                    "parts": [{"text": str(m.get("content", ""))}],
                }
                for m in rest
            ]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = request.stop
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": function_specs(request.tools)}]
        body.update(request.extra)
        url = join_versioned(
            base_url, versioned="v1beta", path=f"/models/{model}:streamGenerateContent"
        )
        return HttpCall(url=url, json=body, params={"alt": "sse"})

    def auth_headers(self, secret: Secret | None, *, options: Mapping[str, str]) -> dict[str, str]:
        """``x-goog-api-key`` with a credential."""
        return {} if secret is None else {"x-goog-api-key": secret.get_secret_value()}

    def stream_adapter(self, *, endpoint: str | None = None) -> GeminiAdapter:
        """A ``streamGenerateContent`` adapter."""
        return GeminiAdapter(provider=self.name, endpoint=endpoint, errors=self.errors)
