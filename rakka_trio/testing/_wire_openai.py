"""OpenAI chat completions, and OpenAI-compatible servers, as the mock speaks them.

``chat.completion.chunk`` objects as ``data:`` lines, a finish chunk with an empty ``delta``,
the usage-only chunk (``"choices": []``) when the request set ``stream_options.include_usage``
(every earlier chunk then carries ``"usage": null``), and ``data: [DONE]``. A failure inside a
200 stream is a ``data: {"error": {...}}`` line.

The compatible route (``/compat/v1/chat/completions``) imitates a reasoning server in the
vLLM/DeepSeek/Groq mould: reasoning text first, in ``reasoning_content`` or ``reasoning``
deltas; optionally no ``[DONE]``; vLLM's ``{"object": "error"}`` error bodies.
"""

from __future__ import annotations

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
    Usage,
    Wire,
    bearer,
    go_duration,
    int_field,
    last,
    prompt_words,
    sse,
)

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = ["CompatWire", "OpenAIChatStream", "OpenAIChatWire", "openai_error", "openai_usage"]

_OPENAI_FINISH: Final[dict[Finish, str]] = {
    "stop": "stop",
    "length": "length",
    "tool": "tool_calls",
    "filter": "content_filter",
}

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


def openai_usage(u: Usage) -> dict[str, Any]:
    """A chat completions ``usage`` object."""
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


def openai_error(
    status: int,
    *,
    error_type: str | None = None,
    code: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """OpenAI's ``{"error": {"message", "type", "param", "code"}}`` for HTTP ``status``."""
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


class OpenAIChatStream(ProviderStream):
    """``POST /v1/chat/completions``.

    ``reasoning_field`` streams the plan's thinking in that delta field first (compatible
    servers); ``sends_done=False`` ends the stream without ``data: [DONE]``. Subclasses add
    provider extras through :meth:`prelude` and :meth:`choice_extras`.
    """

    def __init__(
        self, plan: ReplyPlan, *, reasoning_field: str | None = None, sends_done: bool = True
    ) -> None:
        super().__init__(plan)
        self.reasoning_field = reasoning_field
        self.sends_done = sends_done

    def prelude(self) -> Iterator[Frame]:
        """Frames before the first chunk (none for OpenAI)."""
        return iter(())

    def choice_extras(self, finish: str | None, content: bool) -> dict[str, Any]:
        """Extra fields of a choice (``content``: it carries output)."""
        return {}

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
        return sse(obj)

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return [choice | self.choice_extras(finish, bool(delta) and finish is None)]

    def frames(self) -> Iterator[Frame]:
        p = self.plan
        tool = p.tool
        yield from self.prelude()
        if self.reasoning_field is not None and p.thinking_pieces:
            first = {"role": "assistant", "content": None, self.reasoning_field: ""}
            yield Frame(self._chunk(self._choice(first)), "meta")
            for piece in p.thinking_pieces:
                delta: dict[str, Any] = {"content": None, self.reasoning_field: piece}
                yield Frame(self._chunk(self._choice(delta)), "chunk")
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
            yield Frame(self._chunk([], usage=openai_usage(p.usage)), "closing")
        if self.sends_done:
            yield Frame(b"data: [DONE]\n\n", "closing")

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        err = {"message": message, "type": error_type, "param": None, "code": None}
        return [sse({"error": err})]

    def body(self) -> dict[str, Any]:
        p = self.plan
        message: dict[str, Any] = {
            "role": "assistant",
            "content": p.text if p.tool is None else None,
            "refusal": None,
            "annotations": [],
        }
        if self.reasoning_field is not None and p.thinking:
            message[self.reasoning_field] = p.thinking
        if p.tool is not None:
            message["tool_calls"] = [
                {
                    "id": p.tool.call_id,
                    "type": "function",
                    "function": {"name": p.tool.name, "arguments": p.tool.arguments},
                }
            ]
        finish = _OPENAI_FINISH[p.finish]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {
            "id": p.response_id,
            "object": "chat.completion",
            "created": p.created,
            "model": p.model,
            "choices": [choice | self.choice_extras(finish, True)],
            "usage": openai_usage(p.usage),
            "service_tier": "default",
            "system_fingerprint": p.system_fingerprint,
        }


class OpenAIChatWire(Wire):
    """``POST /v1/chat/completions`` with ``Authorization: Bearer``."""

    route: Route = "openai"
    parse_error = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly.)"
    )

    def prompt_words(self, body: Mapping[str, Any]) -> int:
        return prompt_words(body.get("messages"))

    def max_tokens(self, body: Mapping[str, Any]) -> int | None:
        return int_field(body, "max_completion_tokens") or int_field(body, "max_tokens")

    def tool_name(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        last_message = last(body.get("messages"))
        answered = isinstance(last_message, dict) and last_message.get("role") == "tool"
        if not isinstance(tools, list) or not tools or answered:
            return None
        names = []
        for t in tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.append(fn["name"])
        choice = body.get("tool_choice")
        if choice == "none":
            return None
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            forced = choice["function"].get("name")
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
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "Missing required parameter: 'messages'."
        if body.get("stream_options") is not None and stream is not True:
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return None

    def credential(self, request: HttpRequest, query: Mapping[str, str]) -> str | None:
        return bearer(request)

    def response_headers(self, ids: IdSource) -> list[tuple[str, str]]:
        return [
            ("x-request-id", "req_" + ids.hex(32)),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "1"),
        ]

    def response_id(self, ids: IdSource) -> str:
        return "chatcmpl-" + ids.alnum(29)

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return OpenAIChatStream(plan)

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
        return openai_error(status, error_type=error_type, code=code, message=message)

    def status_for_error_type(self, error_type: str) -> int:
        if error_type in ("requests", "tokens", "rate_limit_exceeded", "insufficient_quota"):
            return 429
        if error_type == "invalid_request_error":
            return 400
        return 500

    def default_stream_error(self) -> tuple[str, str]:
        return "server_error", _OPENAI_ERRORS[500][2]

    def prompt_filter_error(self, request_id: str) -> tuple[int, dict[str, Any]] | None:
        return 400, self.error_body(
            400,
            code="content_filter",
            message="The response was filtered due to the prompt triggering content "
            "management policy. Please modify your prompt and retry.",
        )

    def rate_limit_headers(self, snap: RateSnapshot, *, wall_now: float) -> list[tuple[str, str]]:
        return [
            ("x-ratelimit-limit-requests", str(snap.requests_limit)),
            ("x-ratelimit-limit-tokens", str(snap.tokens_limit)),
            ("x-ratelimit-remaining-requests", str(snap.requests_remaining)),
            ("x-ratelimit-remaining-tokens", str(snap.tokens_remaining)),
            ("x-ratelimit-reset-requests", go_duration(snap.requests_reset)),
            ("x-ratelimit-reset-tokens", go_duration(snap.tokens_reset)),
        ]


_VLLM_TYPES: Final[dict[int, str]] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class CompatWire(OpenAIChatWire):
    """``POST /compat/v1/chat/completions``: a reasoning OpenAI-compatible server.

    Every reply starts with reasoning (in ``reasoning_field`` deltas; ``None``: no reasoning);
    ``sends_done=False`` leaves out ``[DONE]``. Errors use vLLM's shape.
    """

    route: Route = "openai-compatible"

    def __init__(self, *, reasoning_field: str | None, sends_done: bool) -> None:
        self.reasoning_field = reasoning_field
        self.sends_done = sends_done

    def wants_thinking(self, body: Mapping[str, Any]) -> bool:
        return self.reasoning_field is not None

    def response_headers(self, ids: IdSource) -> list[tuple[str, str]]:
        return [("x-request-id", ids.hex(32))]

    def response_id(self, ids: IdSource) -> str:
        return "chatcmpl-" + ids.hex(32)

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return OpenAIChatStream(
            plan, reasoning_field=self.reasoning_field, sends_done=self.sends_done
        )

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
        if error_type == "insufficient_quota" or code is not None:
            # What a proxy in front of OpenAI (LiteLLM ...) passes through unchanged.
            return openai_error(status, error_type=error_type, code=code, message=message)
        default = "InternalServerError" if status >= 500 else "BadRequestError"
        return {
            "object": "error",
            "message": message or "Error.",
            "type": error_type or _VLLM_TYPES.get(status, default),
            "param": None,
            "code": status,
        }

    def status_for_error_type(self, error_type: str) -> int:
        by_type = {v: k for k, v in _VLLM_TYPES.items()}
        return by_type.get(error_type) or super().status_for_error_type(error_type)

    def default_stream_error(self) -> tuple[str, str]:
        return "InternalServerError", "The model server failed while generating."

    def prompt_filter_error(self, request_id: str) -> tuple[int, dict[str, Any]] | None:
        return None  # compatible servers have no content filter; the reply is cut instead

    def rate_limit_headers(self, snap: RateSnapshot, *, wall_now: float) -> list[tuple[str, str]]:
        return []  # most compatible servers send none
