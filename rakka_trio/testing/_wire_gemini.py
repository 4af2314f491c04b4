"""Gemini ``streamGenerateContent`` and ``generateContent`` as the mock speaks them.

With ``alt=sse``: one ``GenerateContentResponse`` per ``data:`` event, lines ended with CRLF as
Google's servers do, no terminal marker (the stream just ends), usage in ``usageMetadata``;
without ``alt=sse`` the same objects stream as one JSON array.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from ._plan import (
    Finish,
    Frame,
    IdSource,
    ProviderStream,
    ReplyPlan,
    Route,
    Wire,
    bearer,
    int_field,
    last,
    prompt_words,
)

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = ["GeminiStream", "GeminiWire", "retry_delay"]

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


def retry_delay(seconds: float) -> str:
    """A ``google.protobuf.Duration`` in JSON: seconds with up to nine decimals and ``s``."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


class GeminiWire(Wire):
    """``/v1beta/models/{model}:streamGenerateContent`` (and ``:generateContent``) with
    ``x-goog-api-key``, ``?key=`` or an OAuth bearer token; the model is in the path."""

    route: Route = "gemini"
    parse_error = "Invalid JSON payload received."

    def prompt_words(self, body: Mapping[str, Any]) -> int:
        return prompt_words(body.get("systemInstruction"), body.get("contents"))

    def max_tokens(self, body: Mapping[str, Any]) -> int | None:
        return int_field(body, "generationConfig", "maxOutputTokens")

    def wants_thinking(self, body: Mapping[str, Any]) -> bool:
        cfg = body.get("generationConfig")
        tc = cfg.get("thinkingConfig") if isinstance(cfg, dict) else None
        return isinstance(tc, dict) and tc.get("includeThoughts") is True

    def tool_name(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        last_content = last(body.get("contents"))
        parts = last_content.get("parts") if isinstance(last_content, dict) else None
        answered = isinstance(parts, list) and any(
            isinstance(p, dict) and "functionResponse" in p for p in parts
        )
        if not isinstance(tools, list) or not tools or answered:
            return None
        names: list[str] = []
        for t in tools:
            decls = t.get("functionDeclarations") if isinstance(t, dict) else None
            if isinstance(decls, list):
                names += [
                    d["name"]
                    for d in decls
                    if isinstance(d, dict) and isinstance(d.get("name"), str)
                ]
        cfg = body.get("toolConfig")
        fcc = cfg.get("functionCallingConfig") if isinstance(cfg, dict) else None
        if isinstance(fcc, dict):
            if fcc.get("mode") == "NONE":
                return None
            allowed = fcc.get("allowedFunctionNames")
            if isinstance(allowed, list) and allowed and isinstance(allowed[0], str) and allowed[0]:
                return allowed[0]
        return names[0] if names else None

    def validate(self, body: Mapping[str, Any], request: HttpRequest) -> str | None:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return "'stream' must be a boolean."
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        return None

    def model(self, body: Mapping[str, Any], path_model: str | None) -> str | None:
        return path_model

    def credential(self, request: HttpRequest, query: Mapping[str, str]) -> str | None:
        return request.header("x-goog-api-key") or query.get("key") or bearer(request)

    def response_id(self, ids: IdSource) -> str:
        return ids.alnum(22)

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return GeminiStream(plan, sse=sse, prompt_blocked=prompt_blocked)

    def error_body(
        self,
        status: int,
        *,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        request_id: str = "",
        retry_after: float | None = None,
    ) -> dict[str, Any]:
        """Google's ``{"error": {"code", "message", "status"}}``; ``error_type`` is the
        ``status``. A 429 carries ``retry_after`` as a ``google.rpc.RetryInfo`` detail."""
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
                    "retryDelay": retry_delay(retry_after),
                }
            ]
        return {"error": err}

    def unauthorized_body(self, request_id: str) -> dict[str, Any]:
        # Google answers a bad key with 400 API_KEY_INVALID; the mock uses the 401
        # UNAUTHENTICATED shape Google sends for rejected credentials, so every provider's
        # credential failure exercises the same rotate-and-retry path.
        return self.error_body(401, message="API key not valid. Please pass a valid API key.")

    def status_for_error_type(self, error_type: str) -> int:
        return _GOOGLE_CODE.get(error_type, 500)

    def default_stream_error(self) -> tuple[str, str]:
        return "INTERNAL", _GEMINI_MESSAGES[500]

    def quota_error(self, request_id: str) -> tuple[int, dict[str, Any]]:
        return 429, self.error_body(
            429,
            message="You exceeded your current quota, please check your plan and billing details.",
        )
