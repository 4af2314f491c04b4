"""Wire shapes of the providers the mock imitates: pure functions and renderers, no I/O.

Everything here turns a :class:`ReplyPlan` (what the "model" says, decided by the mock) into the
bytes a real provider would send, so the HTTP layer only decides *when* to write which frame.
The shapes follow the providers' public wire formats:

* OpenAI chat completions: ``chat.completion.chunk`` objects as ``data:`` lines, a finish chunk
  with an empty ``delta``, the usage-only chunk (``"choices": []``) when the request set
  ``stream_options.include_usage`` (every earlier chunk then carries ``"usage": null``), and
  ``data: [DONE]``. A failure inside a 200 stream is a ``data: {"error": {...}}`` line.
* OpenAI Responses: typed events (``event: response.created`` ... ``response.completed`` /
  ``response.incomplete``) with increasing ``sequence_number`` and no ``[DONE]``; a failure is an
  ``error`` event followed by ``response.failed``.
* Anthropic Messages: ``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` (``text_delta`` / ``thinking_delta`` / ``signature_delta`` /
  ``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop reason and cumulative
  usage) and ``message_stop``; a failure is ``event: error``.
* Gemini ``streamGenerateContent?alt=sse``: one ``GenerateContentResponse`` per ``data:`` event,
  lines ended with CRLF as Google's servers do, no terminal marker (the stream just ends), usage
  in ``usageMetadata``; without ``alt=sse`` the same objects stream as one JSON array.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import string
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import attrs

__all__ = [
    "ROUTES",
    "AnthropicStream",
    "Finish",
    "Frame",
    "FrameKind",
    "GeminiStream",
    "IdSource",
    "OpenAIChatStream",
    "ProviderStream",
    "RateSnapshot",
    "ReplyPlan",
    "ResponsesStream",
    "Route",
    "ToolCall",
    "Usage",
    "count_words",
    "default_stream_error",
    "error_body",
    "go_duration",
    "http_date",
    "rate_limit_headers",
    "split_text",
    "status_for_error_type",
    "stream_for",
]

Route = Literal["openai", "openai-responses", "anthropic", "gemini"]
ROUTES: Final[tuple[Route, ...]] = ("openai", "openai-responses", "anthropic", "gemini")

# Why the plan ended, in neutral terms; each renderer maps it to its provider's vocabulary.
Finish = Literal["stop", "length", "tool", "filter"]
FrameKind = Literal["meta", "chunk", "closing"]

_ALNUM: Final = string.ascii_letters + string.digits


def _dumps(obj: Any) -> str:
    # Compact, and UTF-8 rather than \u escapes: real providers stream raw UTF-8, which is what
    # exercises a client's decoding of characters split across reads.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class IdSource:
    """Provider-shaped identifiers drawn from a seeded RNG, so a seeded mock is reproducible."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def alnum(self, n: int) -> str:
        """``n`` random ASCII letters and digits."""
        return "".join(self._rng.choices(_ALNUM, k=n))

    def hex(self, n: int) -> str:
        """``n`` random lowercase hex digits."""
        return "".join(self._rng.choices("0123456789abcdef", k=n))

    def signature(self) -> str:
        """An opaque base64 blob like Anthropic's thinking-block signatures."""
        return base64.b64encode(self._rng.randbytes(48)).decode("ascii")


# --- plan ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts of one reply. ``output_tokens`` includes ``thinking_tokens``."""

    input_tokens: int
    output_tokens: int
    thinking_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output."""
        return self.input_tokens + self.output_tokens


@attrs.frozen(kw_only=True)
class ToolCall:
    """A function call the mock "model" makes instead of answering in text."""

    name: str
    call_id: str  # call_... (OpenAI), toolu_... (Anthropic); Gemini has none
    item_id: str  # fc_... output item id (Responses API)
    arguments: str  # JSON text
    argument_pieces: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ReplyPlan:
    """Everything a renderer needs to produce one provider response, decided up front."""

    route: Route
    model: str
    response_id: str
    item_id: str  # Responses API message item id; Anthropic request id for error bodies
    created: int  # Unix seconds, as providers report them
    text_pieces: tuple[str, ...]
    thinking_pieces: tuple[str, ...] = ()
    signature: str = ""
    tool: ToolCall | None = None
    finish: Finish = "stop"
    usage: Usage
    include_usage: bool = False  # OpenAI chat: stream_options.include_usage
    system_fingerprint: str = ""

    @property
    def text(self) -> str:
        """The whole text answer."""
        return "".join(self.text_pieces)

    @property
    def thinking(self) -> str:
        """The whole thinking text."""
        return "".join(self.thinking_pieces)


_WORD_RE: Final = re.compile(r"\s*\S+")


def split_text(text: str, pieces: int) -> tuple[str, ...]:
    """Split ``text`` into ``pieces`` contiguous parts whose concatenation is ``text``.

    Parts break at word boundaries (leading whitespace stays with its word, the way tokenizers
    emit ``" world"``) when there are at least ``pieces`` words, and at character boundaries
    otherwise. Part sizes differ by at most one word (or character). Fewer parts come back only
    when ``text`` has fewer than ``pieces`` characters; empty text gives no parts.
    """
    if pieces < 1:
        raise ValueError("pieces must be >= 1")
    if not text:
        return ()
    words: list[str] = _WORD_RE.findall(text)
    if len(words) >= pieces:
        tail = text[sum(map(len, words)) :]  # trailing whitespace, if any
        words[-1] += tail
        units = words
    else:
        units = list(text)
    n = min(pieces, len(units))
    size, extra = divmod(len(units), n)
    out: list[str] = []
    i = 0
    for k in range(n):
        step = size + (1 if k < extra else 0)
        out.append("".join(units[i : i + step]))
        i += step
    return tuple(out)


def count_words(text: str) -> int:
    """The mock's deterministic "token" count: whitespace-separated words."""
    return len(text.split())


# --- frames ----------------------------------------------------------------------------------


@attrs.frozen
class Frame:
    """One write of a streamed body.

    ``kind`` tells the player where faults may strike: ``meta`` frames carry no output (stream
    start, block boundaries, pings) and are never a fault point; each ``chunk`` frame carries one
    piece of output (text, thinking or tool-call arguments) and counts towards ``after_chunks``;
    ``closing`` frames finish the stream (finish reason, usage, terminal marker).
    """

    data: bytes
    kind: FrameKind


def _sse(payload: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else _dumps(payload)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class ProviderStream:
    """Base of the per-provider renderers: frames of a stream, its error event, a full body."""

    content_type: str = "text/event-stream; charset=utf-8"

    def __init__(self, plan: ReplyPlan) -> None:
        self.plan = plan

    def frames(self) -> Iterator[Frame]:
        """The streamed body, frame by frame."""
        raise NotImplementedError

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        """What the provider sends when generation fails after the stream has started."""
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        """The non-streaming JSON response for the same plan."""
        raise NotImplementedError


# --- OpenAI chat completions -----------------------------------------------------------------

_OPENAI_FINISH: Final[dict[Finish, str]] = {
    "stop": "stop",
    "length": "length",
    "tool": "tool_calls",
    "filter": "content_filter",
}


def _openai_usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.thinking_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class OpenAIChatStream(ProviderStream):
    """``POST /v1/chat/completions``."""

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        p = self.plan
        obj: dict[str, Any] = {
            "id": p.response_id,
            "object": "chat.completion.chunk",
            "created": p.created,
            "model": p.model,
            "service_tier": "default",
            "system_fingerprint": p.system_fingerprint,
            "choices": choices,
        }
        if p.include_usage:
            obj["usage"] = None  # every chunk but the last carries a null usage
        obj.update(extra)
        return _sse(obj)

    @staticmethod
    def _choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    def frames(self) -> Iterator[Frame]:
        p = self.plan
        tool = p.tool
        if tool is None:
            first = {"role": "assistant", "content": "", "refusal": None}
            yield Frame(self._chunk(self._choice(first)), "meta")
            for piece in p.text_pieces:
                yield Frame(self._chunk(self._choice({"content": piece})), "chunk")
        else:
            head = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": tool.call_id,
                        "type": "function",
                        "function": {"name": tool.name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
            yield Frame(self._chunk(self._choice(head)), "meta")
            for piece in tool.argument_pieces:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                yield Frame(self._chunk(self._choice(delta)), "chunk")
        yield Frame(self._chunk(self._choice({}, _OPENAI_FINISH[p.finish])), "closing")
        if p.include_usage:
            yield Frame(self._chunk([], usage=_openai_usage(p.usage)), "closing")
        yield Frame(b"data: [DONE]\n\n", "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        err = {"message": message, "type": error_type, "param": None, "code": None}
        return [_sse({"error": err})]

    def body(self) -> dict[str, Any]:
        p = self.plan
        message: dict[str, Any] = {
            "role": "assistant",
            "content": p.text if p.tool is None else None,
            "refusal": None,
            "annotations": [],
        }
        if p.tool is not None:
            message["tool_calls"] = [
                {
                    "id": p.tool.call_id,
                    "type": "function",
                    "function": {"name": p.tool.name, "arguments": p.tool.arguments},
                }
            ]
        return {
            "id": p.response_id,
            "object": "chat.completion",
            "created": p.created,
            "model": p.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[p.finish],
                }
            ],
            "usage": _openai_usage(p.usage),
            "service_tier": "default",
            "system_fingerprint": p.system_fingerprint,
        }


# --- OpenAI Responses ------------------------------------------------------------------------


class ResponsesStream(ProviderStream):
    """``POST /v1/responses``."""

    def __init__(self, plan: ReplyPlan) -> None:
        super().__init__(plan)
        self._seq = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return _sse(obj, event=kind)

    def _usage(self) -> dict[str, Any]:
        u = self.plan.usage
        return {
            "input_tokens": u.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.thinking_tokens},
            "total_tokens": u.total_tokens,
        }

    def _status(self) -> tuple[str, dict[str, str] | None]:
        f = self.plan.finish
        if f == "length":
            return "incomplete", {"reason": "max_output_tokens"}
        if f == "filter":
            return "incomplete", {"reason": "content_filter"}
        return "completed", None

    def _item(self, done: bool) -> dict[str, Any]:
        p = self.plan
        status = "completed" if done else "in_progress"
        if p.tool is not None:
            return {
                "id": p.tool.item_id,
                "type": "function_call",
                "status": status,
                "arguments": p.tool.arguments if done else "",
                "call_id": p.tool.call_id,
                "name": p.tool.name,
            }
        if done and self._status()[0] == "incomplete":
            status = "incomplete"
        content = [self._part(p.text)] if done else []
        return {
            "id": p.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _response(
        self,
        status: str,
        *,
        output: list[dict[str, Any]],
        usage: bool,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        p = self.plan
        return {
            "id": p.response_id,
            "object": "response",
            "created_at": p.created,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": None,
            "max_output_tokens": None,
            "model": p.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": self._usage() if usage else None,
            "metadata": {},
        }

    def frames(self) -> Iterator[Frame]:
        p = self.plan
        pending = self._response("in_progress", output=[], usage=False)
        yield Frame(self._event("response.created", response=pending), "meta")
        yield Frame(self._event("response.in_progress", response=pending), "meta")
        item = self._item(done=False)
        yield Frame(self._event("response.output_item.added", output_index=0, item=item), "meta")
        if p.tool is not None:
            ids = {"item_id": p.tool.item_id, "output_index": 0}
            for piece in p.tool.argument_pieces:
                ev = self._event("response.function_call_arguments.delta", **ids, delta=piece)
                yield Frame(ev, "chunk")
            ev = self._event(
                "response.function_call_arguments.done", **ids, arguments=p.tool.arguments
            )
            yield Frame(ev, "closing")
        else:
            ids = {"item_id": p.item_id, "output_index": 0, "content_index": 0}
            ev = self._event("response.content_part.added", **ids, part=self._part(""))
            yield Frame(ev, "meta")
            for piece in p.text_pieces:
                ev = self._event("response.output_text.delta", **ids, delta=piece, logprobs=[])
                yield Frame(ev, "chunk")
            ev = self._event("response.output_text.done", **ids, text=p.text, logprobs=[])
            yield Frame(ev, "closing")
            ev = self._event("response.content_part.done", **ids, part=self._part(p.text))
            yield Frame(ev, "closing")
        done_item = self._item(done=True)
        ev = self._event("response.output_item.done", output_index=0, item=done_item)
        yield Frame(ev, "closing")
        status, incomplete = self._status()
        final = self._response(status, output=[done_item], usage=True, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        yield Frame(self._event(kind, response=final), "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        error = self._event("error", code=error_type, message=message, param=None)
        failed = self._response(
            "failed", output=[], usage=False, error={"code": error_type, "message": message}
        )
        return [error, self._event("response.failed", response=failed)]

    def body(self) -> dict[str, Any]:
        status, incomplete = self._status()
        return self._response(
            status, output=[self._item(done=True)], usage=True, incomplete=incomplete
        )


# --- Anthropic Messages ----------------------------------------------------------------------

_ANTHROPIC_STOP: Final[dict[Finish, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool": "tool_use",
    "filter": "refusal",
}


class AnthropicStream(ProviderStream):
    """``POST /v1/messages``."""

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.plan.usage.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def _message(self, *, content: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        p = self.plan
        return {
            "id": p.response_id,
            "type": "message",
            "role": "assistant",
            "model": p.model,
            "content": content,
            "stop_reason": _ANTHROPIC_STOP[p.finish] if done else None,
            "stop_sequence": None,
            # message_start reports the one output token generated so far, as the API does.
            "usage": self._usage(p.usage.output_tokens if done else 1),
        }

    def frames(self) -> Iterator[Frame]:
        p = self.plan
        start = {"type": "message_start", "message": self._message(content=[], done=False)}
        yield Frame(_sse(start, "message_start"), "meta")
        index = 0
        pinged = False

        def block_start(block: dict[str, Any]) -> bytes:
            ev = {"type": "content_block_start", "index": index, "content_block": block}
            return _sse(ev, "content_block_start")

        def delta(d: dict[str, Any]) -> bytes:
            ev = {"type": "content_block_delta", "index": index, "delta": d}
            return _sse(ev, "content_block_delta")

        def block_stop() -> bytes:
            return _sse({"type": "content_block_stop", "index": index}, "content_block_stop")

        def ping() -> Iterator[Frame]:
            # The API sends one ping right after the first content block opens.
            nonlocal pinged
            if not pinged:
                pinged = True
                yield Frame(_sse({"type": "ping"}, "ping"), "meta")

        if p.thinking_pieces:
            yield Frame(block_start({"type": "thinking", "thinking": "", "signature": ""}), "meta")
            yield from ping()
            for piece in p.thinking_pieces:
                yield Frame(delta({"type": "thinking_delta", "thinking": piece}), "chunk")
            yield Frame(delta({"type": "signature_delta", "signature": p.signature}), "meta")
            yield Frame(block_stop(), "meta")
            index += 1
        if p.tool is not None:
            block = {"type": "tool_use", "id": p.tool.call_id, "name": p.tool.name, "input": {}}
            yield Frame(block_start(block), "meta")
            yield from ping()
            for piece in p.tool.argument_pieces:
                yield Frame(delta({"type": "input_json_delta", "partial_json": piece}), "chunk")
        else:
            yield Frame(block_start({"type": "text", "text": ""}), "meta")
            yield from ping()
            for piece in p.text_pieces:
                yield Frame(delta({"type": "text_delta", "text": piece}), "chunk")
        yield Frame(block_stop(), "closing")
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _ANTHROPIC_STOP[p.finish], "stop_sequence": None},
            "usage": self._usage(p.usage.output_tokens),  # cumulative, not incremental
        }
        yield Frame(_sse(message_delta, "message_delta"), "closing")
        yield Frame(_sse({"type": "message_stop"}, "message_stop"), "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        ev = {"type": "error", "error": {"type": error_type, "message": message}}
        return [_sse(ev, "error")]

    def body(self) -> dict[str, Any]:
        p = self.plan
        content: list[dict[str, Any]] = []
        if p.thinking_pieces:
            content.append({"type": "thinking", "thinking": p.thinking, "signature": p.signature})
        if p.tool is not None:
            args = json.loads(p.tool.arguments)
            content.append(
                {"type": "tool_use", "id": p.tool.call_id, "name": p.tool.name, "input": args}
            )
        elif p.text or p.finish != "filter":
            content.append({"type": "text", "text": p.text})
        return self._message(content=content, done=True)


# --- Gemini ----------------------------------------------------------------------------------

_GEMINI_FINISH: Final[dict[Finish, str]] = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool": "STOP",  # Gemini reports a function call with finishReason STOP
    "filter": "SAFETY",
}

_SAFETY_RATINGS: Final = [
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
]

_GOOGLE_STATUS: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GOOGLE_CODE: Final[dict[str, int]] = {v: k for k, v in _GOOGLE_STATUS.items()} | {
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
}


class GeminiStream(ProviderStream):
    """``POST /v1beta/models/{model}:streamGenerateContent`` and ``:generateContent``.

    ``sse=False`` renders the default (no ``alt=sse``) streaming form: one JSON array whose
    elements arrive as they are generated.
    """

    def __init__(self, plan: ReplyPlan, *, sse: bool = True, prompt_blocked: bool = False) -> None:
        super().__init__(plan)
        self.sse = sse
        self.prompt_blocked = prompt_blocked
        self.content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
        self._first = True

    def _frame(self, obj: Mapping[str, Any]) -> bytes:
        # Google's separators and CRLF line ends, byte for byte what clients meet in the wild.
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ": "))
        if self.sse:
            return f"data: {text}\r\n\r\n".encode()
        lead = "[" if self._first else ",\r\n"
        self._first = False
        return (lead + text).encode()

    def _usage(self, *, final: bool) -> dict[str, Any]:
        u = self.plan.usage
        meta: dict[str, Any] = {"promptTokenCount": u.input_tokens}
        total = u.input_tokens
        if final and not self.prompt_blocked:
            visible = u.output_tokens - u.thinking_tokens
            meta["candidatesTokenCount"] = visible
            total += u.output_tokens
            if u.thinking_tokens:
                meta["thoughtsTokenCount"] = u.thinking_tokens
        meta["totalTokenCount"] = total
        meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": u.input_tokens}]
        return meta

    def _envelope(self, candidate: dict[str, Any] | None, *, final: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        if candidate is not None:
            obj["candidates"] = [candidate]
        obj["usageMetadata"] = self._usage(final=final)
        obj["modelVersion"] = self.plan.model
        obj["responseId"] = self.plan.response_id
        return obj

    @staticmethod
    def _candidate(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
        cand: dict[str, Any] = {}
        if parts:
            cand["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            cand["finishReason"] = finish
            if finish == "SAFETY":
                cand["safetyRatings"] = _SAFETY_RATINGS
        cand["index"] = 0
        return cand

    def _blocked(self) -> dict[str, Any]:
        obj = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS}}
        return obj | {
            "usageMetadata": self._usage(final=True),
            "modelVersion": self.plan.model,
            "responseId": self.plan.response_id,
        }

    def frames(self) -> Iterator[Frame]:
        p = self.plan
        if self.prompt_blocked:
            yield Frame(self._frame(self._blocked()), "closing")
            if not self.sse:
                yield Frame(b"]", "closing")
            return
        finish = _GEMINI_FINISH[p.finish]
        for piece in p.thinking_pieces:
            cand = self._candidate([{"text": piece, "thought": True}])
            yield Frame(self._frame(self._envelope(cand, final=False)), "chunk")
        if p.tool is not None:
            call = {"functionCall": {"name": p.tool.name, "args": json.loads(p.tool.arguments)}}
            yield Frame(self._frame(self._envelope(self._candidate([call]), final=False)), "chunk")
        else:
            for piece in p.text_pieces:
                cand = self._candidate([{"text": piece}])
                yield Frame(self._frame(self._envelope(cand, final=False)), "chunk")
        # The finish reason and the complete usage arrive on a last chunk of their own (with an
        # empty text part after a normal answer, without content after a safety block), so a
        # stream cut before it has no finishReason: that is how a client spots truncation.
        parts: list[dict[str, Any]] = [{"text": ""}] if p.finish in ("stop", "length") else []
        cand = self._candidate(parts, finish)
        yield Frame(self._frame(self._envelope(cand, final=True)), "closing")
        if not self.sse:
            yield Frame(b"]", "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        err = {"code": _GOOGLE_CODE.get(error_type, 500), "message": message, "status": error_type}
        out = [self._frame({"error": err})]
        if not self.sse:
            out.append(b"]")
        return out

    def body(self) -> dict[str, Any]:
        p = self.plan
        if self.prompt_blocked:
            return self._blocked()
        parts: list[dict[str, Any]] = []
        if p.thinking:
            parts.append({"text": p.thinking, "thought": True})
        if p.tool is not None:
            parts.append(
                {"functionCall": {"name": p.tool.name, "args": json.loads(p.tool.arguments)}}
            )
        elif p.text:
            parts.append({"text": p.text})
        return self._envelope(self._candidate(parts, _GEMINI_FINISH[p.finish]), final=True)


def stream_for(
    plan: ReplyPlan, *, gemini_sse: bool = True, prompt_blocked: bool = False
) -> ProviderStream:
    """The renderer for ``plan.route``."""
    if plan.route == "openai":
        return OpenAIChatStream(plan)
    if plan.route == "openai-responses":
        return ResponsesStream(plan)
    if plan.route == "anthropic":
        return AnthropicStream(plan)
    return GeminiStream(plan, sse=gemini_sse, prompt_blocked=prompt_blocked)


# --- error bodies ----------------------------------------------------------------------------

_OPENAI_ERRORS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("cf_bad_gateway", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}

_ANTHROPIC_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}

_GEMINI_MESSAGES: Final[dict[int, str]] = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission.",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


def _retry_delay(seconds: float) -> str:
    # google.protobuf.Duration JSON form: seconds with up to nine fractional digits and "s".
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def error_body(
    route: Route | None,
    status: int,
    *,
    error_type: str | None = None,
    code: str | None = None,
    message: str | None = None,
    request_id: str = "",
    retry_after: float | None = None,
) -> dict[str, Any]:
    """The JSON error body ``route``'s provider sends with HTTP ``status``.

    ``error_type`` is in the provider's vocabulary: OpenAI ``error.type``, Anthropic
    ``error.type``, Gemini ``error.status``. ``code`` sets OpenAI's ``error.code``. ``None``
    picks the provider's usual value for the status. ``route=None`` (an unknown path) uses the
    OpenAI shape. Gemini 429s carry ``retry_after`` as a ``google.rpc.RetryInfo`` detail.
    """
    if route == "anthropic":
        dtype, dmsg = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        return {
            "type": "error",
            "error": {"type": error_type or dtype, "message": message or dmsg},
            "request_id": request_id,
        }
    if route == "gemini":
        gstatus = error_type or _GOOGLE_STATUS.get(
            status, "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION"
        )
        err: dict[str, Any] = {
            "code": status,
            "message": message or _GEMINI_MESSAGES.get(status, "Error."),
            "status": gstatus,
        }
        if retry_after is not None:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": _retry_delay(retry_after),
                }
            ]
        return {"error": err}
    dtype, dcode, dmsg = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    return {
        "error": {
            "message": message or dmsg,
            "type": error_type or dtype,
            "param": None,
            "code": code if code is not None else dcode,
        }
    }


_ANTHROPIC_TYPE_STATUS: Final[dict[str, int]] = {v[0]: k for k, v in _ANTHROPIC_ERRORS.items()} | {
    "api_error": 500
}


def status_for_error_type(route: Route, error_type: str) -> int:
    """The HTTP status a provider pairs with an error type (used when a mid-stream error hits a
    non-streaming request, which can only report it as a status)."""
    if route == "anthropic":
        return _ANTHROPIC_TYPE_STATUS.get(error_type, 500)
    if route == "gemini":
        return _GOOGLE_CODE.get(error_type, 500)
    if error_type in ("requests", "tokens", "rate_limit_exceeded"):
        return 429
    if error_type == "insufficient_quota":
        return 429
    if error_type == "invalid_request_error":
        return 400
    return 500


def default_stream_error(route: Route) -> tuple[str, str]:
    """The provider's most common mid-stream failure: ``(error_type, message)``."""
    if route == "anthropic":
        return "overloaded_error", "Overloaded"
    if route == "gemini":
        return "INTERNAL", _GEMINI_MESSAGES[500]
    return "server_error", _OPENAI_ERRORS[500][2]


# --- rate-limit headers ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RateSnapshot:
    """Limits and what is left of them after a request, with seconds until each resets."""

    requests_limit: int
    requests_remaining: int
    requests_reset: float
    tokens_limit: int
    tokens_remaining: int
    tokens_reset: float
    input_tokens_limit: int
    input_tokens_remaining: int
    output_tokens_limit: int
    output_tokens_remaining: int


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String`` at millisecond precision, as OpenAI's
    ``x-ratelimit-reset-*`` headers do: ``"20ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def _rfc3339(wall: float) -> str:
    moment = datetime.fromtimestamp(math.ceil(wall), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_limit_headers(
    route: Route, snap: RateSnapshot, *, wall_now: float
) -> list[tuple[str, str]]:
    """``x-ratelimit-*`` (OpenAI) or ``anthropic-ratelimit-*`` headers; Gemini sends none."""
    if route in ("openai", "openai-responses"):
        return [
            ("x-ratelimit-limit-requests", str(snap.requests_limit)),
            ("x-ratelimit-limit-tokens", str(snap.tokens_limit)),
            ("x-ratelimit-remaining-requests", str(snap.requests_remaining)),
            ("x-ratelimit-remaining-tokens", str(snap.tokens_remaining)),
            ("x-ratelimit-reset-requests", go_duration(snap.requests_reset)),
            ("x-ratelimit-reset-tokens", go_duration(snap.tokens_reset)),
        ]
    if route == "anthropic":
        req_reset = _rfc3339(wall_now + snap.requests_reset)
        tok_reset = _rfc3339(wall_now + snap.tokens_reset)
        return [
            ("anthropic-ratelimit-requests-limit", str(snap.requests_limit)),
            ("anthropic-ratelimit-requests-remaining", str(snap.requests_remaining)),
            ("anthropic-ratelimit-requests-reset", req_reset),
            ("anthropic-ratelimit-tokens-limit", str(snap.tokens_limit)),
            ("anthropic-ratelimit-tokens-remaining", str(snap.tokens_remaining)),
            ("anthropic-ratelimit-tokens-reset", tok_reset),
            ("anthropic-ratelimit-input-tokens-limit", str(snap.input_tokens_limit)),
            ("anthropic-ratelimit-input-tokens-remaining", str(snap.input_tokens_remaining)),
            ("anthropic-ratelimit-input-tokens-reset", tok_reset),
            ("anthropic-ratelimit-output-tokens-limit", str(snap.output_tokens_limit)),
            ("anthropic-ratelimit-output-tokens-remaining", str(snap.output_tokens_remaining)),
            ("anthropic-ratelimit-output-tokens-reset", tok_reset),
        ]
    return []


def http_date(wall: float) -> str:
    """An IMF-fixdate (RFC 9110), e.g. for ``Retry-After`` and ``Date``."""
    moment = datetime.fromtimestamp(0, UTC) + timedelta(seconds=math.ceil(wall))
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
