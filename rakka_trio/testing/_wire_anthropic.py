"""Anthropic Messages as the mock speaks it.

``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` /
``thinking_delta`` / ``signature_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop reason and cumulative usage) and ``message_stop``; a failure is
``event: error``.
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
    RateSnapshot,
    ReplyPlan,
    Route,
    Wire,
    bearer,
    int_field,
    last,
    prompt_words,
    rfc3339,
)
from ._plan import sse as sse_event

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = ["AnthropicStream", "AnthropicWire"]

_ANTHROPIC_STOP: Final[dict[Finish, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool": "tool_use",
    "filter": "refusal",
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
_ANTHROPIC_TYPE_STATUS: Final[dict[str, int]] = {v[0]: k for k, v in _ANTHROPIC_ERRORS.items()}


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
        yield Frame(sse_event(start, "message_start"), "meta")
        index = 0
        pinged = False

        def block_start(block: dict[str, Any]) -> bytes:
            ev = {"type": "content_block_start", "index": index, "content_block": block}
            return sse_event(ev, "content_block_start")

        def delta(d: dict[str, Any]) -> bytes:
            ev = {"type": "content_block_delta", "index": index, "delta": d}
            return sse_event(ev, "content_block_delta")

        def block_stop() -> bytes:
            return sse_event({"type": "content_block_stop", "index": index}, "content_block_stop")

        def ping() -> Iterator[Frame]:
            # The API sends one ping right after the first content block opens.
            nonlocal pinged
            if not pinged:
                pinged = True
                yield Frame(sse_event({"type": "ping"}, "ping"), "meta")

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
        yield Frame(sse_event(message_delta, "message_delta"), "closing")
        yield Frame(sse_event({"type": "message_stop"}, "message_stop"), "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        ev = {"type": "error", "error": {"type": error_type, "message": message}}
        return [sse_event(ev, "error")]

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


class AnthropicWire(Wire):
    """``POST /v1/messages`` with ``x-api-key`` (or an OAuth bearer token)."""

    route: Route = "anthropic"
    parse_error = "There was an issue with your request body: it is not valid JSON."

    def prompt_words(self, body: Mapping[str, Any]) -> int:
        return prompt_words(body.get("system"), body.get("messages"))

    def max_tokens(self, body: Mapping[str, Any]) -> int | None:
        return int_field(body, "max_tokens")

    def wants_thinking(self, body: Mapping[str, Any]) -> bool:
        thinking = body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")

    def tool_name(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        last_message = last(body.get("messages"))
        content = last_message.get("content") if isinstance(last_message, dict) else None
        answered = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        if not isinstance(tools, list) or not tools or answered:
            return None
        names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            if choice.get("type") == "none":
                return None
            forced = choice.get("name") if choice.get("type") == "tool" else None
            if isinstance(forced, str) and forced:
                return forced
        return names[0] if names else None

    def validate(self, body: Mapping[str, Any], request: HttpRequest) -> str | None:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return "'stream' must be a boolean."
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "you must provide a model parameter"
        if request.header("anthropic-version") is None:
            return "anthropic-version: header is required"
        if not isinstance(body.get("messages"), list):
            return "messages: Field required"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return "max_tokens: Field required"
        return None

    def credential(self, request: HttpRequest, query: Mapping[str, str]) -> str | None:
        return request.header("x-api-key") or bearer(request)

    def response_headers(self, ids: IdSource) -> list[tuple[str, str]]:
        return [("request-id", "req_011C" + ids.alnum(20))]

    def response_id(self, ids: IdSource) -> str:
        return "msg_01" + ids.alnum(22)

    def call_id(self, ids: IdSource) -> str:
        return "toolu_01" + ids.alnum(22)

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return AnthropicStream(plan)

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
        dtype, dmsg = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        return {
            "type": "error",
            "error": {"type": error_type or dtype, "message": message or dmsg},
            "request_id": request_id,
        }

    def status_for_error_type(self, error_type: str) -> int:
        return _ANTHROPIC_TYPE_STATUS.get(error_type, 500)

    def default_stream_error(self) -> tuple[str, str]:
        return "overloaded_error", "Overloaded"

    def quota_error(self, request_id: str) -> tuple[int, dict[str, Any]]:
        return 402, self.error_body(402, request_id=request_id)

    def rate_limit_headers(self, snap: RateSnapshot, *, wall_now: float) -> list[tuple[str, str]]:
        req_reset = rfc3339(wall_now + snap.requests_reset)
        tok_reset = rfc3339(wall_now + snap.tokens_reset)
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
