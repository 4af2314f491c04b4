"""What the mock answers: the reply plan for a request, error faults, and playing a reply out.

Everything here is route-neutral: what differs between providers comes from the route's
:class:`~rakka_trio.testing._plan.Wire`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._plan import (
    Finish,
    IdSource,
    ProviderStream,
    ReplyPlan,
    ToolCall,
    Usage,
    Wire,
    count_words,
    split_text,
    words,
)
from ._server import ConnectionAborted, ResponseWriter

if TYPE_CHECKING:
    from ._faults import Fault
    from ._mock_provider import RecordedRequest

__all__ = ["error_fault", "format_seconds", "play_body", "play_stream", "reply_plan"]


def format_seconds(value: float) -> str:
    """Whole numbers as providers send them (``"2"``); fractions to the millisecond."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def reply_plan(
    wire: Wire,
    ids: IdSource,
    *,
    model: str,
    body: Mapping[str, Any],
    fault: Fault | None,
    reply: str,
    thinking: str,
    chunks: int,
    tool_arguments: Mapping[str, Any] | None,
) -> ReplyPlan:
    """What the "model" answers ``body`` with (``fault``: a content filter cuts it)."""
    text = reply
    finish: Finish = "stop"
    limit = wire.max_tokens(body)
    if limit is not None and count_words(text) > limit:
        text = words(text, limit)
        finish = "length"
    thinking_pieces: tuple[str, ...] = ()
    if wire.wants_thinking(body):
        thinking_pieces = split_text(thinking, chunks)
    tool: ToolCall | None = None
    name = wire.tool_name(body)
    filtered = fault is not None and fault.kind == "content_filter"
    if name is not None and not filtered:
        args = tool_arguments if tool_arguments is not None else {"text": reply}
        arguments = json.dumps(dict(args), ensure_ascii=False)
        call_id = wire.call_id(ids)
        tool = ToolCall(
            name=name,
            call_id=call_id,
            item_id="fc_" + ids.hex(48),
            arguments=arguments,
            argument_pieces=split_text(arguments, chunks),
        )
        finish = "tool"
    text_pieces = split_text(text, chunks)
    if filtered:
        assert fault is not None
        keep = 0 if fault.stage == "prompt" else fault.after_chunks
        text_pieces = text_pieces[:keep]
        thinking_pieces = () if fault.stage == "prompt" else thinking_pieces
        finish = "filter"
    thinking_words = count_words("".join(thinking_pieces))
    output = thinking_words + (
        count_words(tool.arguments) if tool is not None else count_words("".join(text_pieces))
    )
    response_id = wire.response_id(ids)
    stream_options = body.get("stream_options")
    return ReplyPlan(
        route=wire.route,
        model=model,
        response_id=response_id,
        item_id="msg_" + ids.hex(48),
        created=int(time.time()),
        text_pieces=text_pieces,
        thinking_pieces=thinking_pieces,
        signature=ids.signature() if thinking_pieces else "",
        tool=tool,
        finish=finish,
        usage=Usage(
            input_tokens=wire.prompt_words(body),
            output_tokens=output,
            thinking_tokens=thinking_words,
        ),
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        system_fingerprint="fp_" + ids.hex(10),
    )


def error_fault(
    wire: Wire, fault: Fault, request_id: str, wait: float | None
) -> tuple[int, dict[str, Any]] | None:
    """``(status, body)`` of the error response ``fault`` calls for; ``None`` if it is not an
    error response (a stream fault, or a filtered prompt this provider answers in-band)."""
    kind = fault.kind
    if kind == "status":
        assert fault.status_code is not None
        status = fault.status_code
        body = wire.error_body(
            status,
            error_type=fault.error_type,
            code=fault.code,
            message=fault.message,
            request_id=request_id,
            retry_after=wait,
        )
        return status, body
    if kind == "rate_limited":
        return 429, wire.error_body(
            429, message=fault.message, request_id=request_id, retry_after=wait
        )
    if kind == "insufficient_quota":
        return wire.quota_error(request_id)
    if kind == "unauthorized":
        return 401, wire.unauthorized_body(request_id)
    if kind == "content_filter" and fault.stage == "prompt":
        return wire.prompt_filter_error(request_id)
    return None


async def play_stream(
    writer: ResponseWriter,
    rec: RecordedRequest,
    renderer: ProviderStream,
    fault: Fault | None,
    headers: list[tuple[str, str]],
    *,
    chunk_delay: float,
    stream_error: Callable[[Fault], tuple[str, str]],
) -> None:
    """Write a streamed reply frame by frame, with the pacing and the fault it asks for."""
    kind = fault.kind if fault is not None else None
    armed = kind in ("stall", "truncate", "mid_stream_error")
    await writer.start(
        200,
        [*headers, ("content-type", renderer.content_type), ("cache-control", "no-cache")],
    )
    if not armed and not chunk_delay:
        # Nothing paces or interrupts this stream: write it in one piece (the same bytes,
        # one chunk on the wire), so the mock is not what limits a throughput benchmark.
        await writer.write(b"".join(frame.data for frame in renderer.frames()))
        await writer.end()
        rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"
        return
    sent = 0
    for frame in renderer.frames():
        if frame.kind == "chunk" and sent and chunk_delay:
            await trio.sleep(chunk_delay)
        # A positioned fault strikes before the chunk that would exceed after_chunks, or
        # before the stream's closing frames when there are fewer chunks than that.
        if (
            armed
            and fault is not None
            and frame.kind != "meta"
            and (frame.kind == "closing" or sent >= fault.after_chunks)
        ):
            armed = False
            if fault.kind == "stall":
                await trio.sleep(fault.delay)
            elif fault.kind == "truncate":
                rec.outcome = "truncated"
                if fault.close_connection:
                    raise ConnectionAborted(reset=False)
                await writer.end()
                return
            else:
                error_type, message = stream_error(fault)
                for data in renderer.error_frames(error_type, message):
                    await writer.write(data)
                await writer.end()
                rec.outcome = "mid_stream_error"
                return
        await writer.write(frame.data)
        if frame.kind == "chunk":
            sent += 1
    await writer.end()
    rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"


async def play_body(
    writer: ResponseWriter,
    rec: RecordedRequest,
    renderer: ProviderStream,
    fault: Fault | None,
    headers: list[tuple[str, str]],
) -> None:
    """Write a non-streamed reply (a stall or truncation fault applies to its body)."""
    data = json.dumps(renderer.body(), ensure_ascii=False, separators=(",", ":")).encode()
    hdrs = [*headers, ("content-type", "application/json")]
    kind = fault.kind if fault is not None else None
    await writer.start(200, hdrs, content_length=len(data))
    if kind == "stall":
        assert fault is not None
        await trio.sleep(fault.delay)
    elif kind == "truncate":
        # Half the promised Content-Length, then FIN: the client sees an incomplete body.
        await writer.write(data[: len(data) // 2])
        rec.outcome = "truncated"
        raise ConnectionAborted(reset=False)
    await writer.write(data)
    await writer.end()
    rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"
