"""The OpenAI Responses API as the mock speaks it.

Typed events (``event: response.created`` ... ``response.completed`` / ``response.incomplete``)
with increasing ``sequence_number`` and no ``[DONE]``; a failure is an ``error`` event followed
by ``response.failed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._plan import Frame, IdSource, ProviderStream, ReplyPlan, Route, int_field, last, prompt_words
from ._plan import sse as sse_event
from ._wire_openai import OpenAIChatWire

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = ["ResponsesStream", "ResponsesWire"]


class ResponsesStream(ProviderStream):
    """``POST /v1/responses``."""

    def __init__(self, plan: ReplyPlan) -> None:
        super().__init__(plan)
        self._seq = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(obj, event=kind)

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


class ResponsesWire(OpenAIChatWire):
    """``POST /v1/responses``: OpenAI's auth, errors and headers, the Responses shapes."""

    route: Route = "openai-responses"

    def prompt_words(self, body: Mapping[str, Any]) -> int:
        return prompt_words(body.get("instructions"), body.get("input"))

    def max_tokens(self, body: Mapping[str, Any]) -> int | None:
        return int_field(body, "max_output_tokens")

    def tool_name(self, body: Mapping[str, Any]) -> str | None:
        tools = body.get("tools")
        last_item = last(body.get("input"))
        answered = isinstance(last_item, dict) and last_item.get("type") == "function_call_output"
        if not isinstance(tools, list) or not tools or answered:
            return None
        names = [
            t["name"]
            for t in tools
            if isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("name"), str)
        ]
        choice = body.get("tool_choice")
        if choice == "none":
            return None
        if isinstance(choice, dict) and choice.get("type") == "function":
            forced = choice.get("name")
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
        if not isinstance(body.get("input"), str | list):
            return "Missing required parameter: 'input'."
        return None

    def response_id(self, ids: IdSource) -> str:
        return "resp_" + ids.hex(48)

    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        return ResponsesStream(plan)
