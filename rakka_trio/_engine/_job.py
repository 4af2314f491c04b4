"""One request on one endpoint's queue, and its deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._chunks import StreamChunk, Usage
from .._config import EndpointConfig
from .._errors import DeadlineExceeded, RakkaError
from .._request import ChatRequest
from ._types import DONE, QUEUED, WAITING

if TYPE_CHECKING:
    from ._queue import Engine


class Job:
    """One request on one endpoint (a Submission may go through several)."""

    __slots__ = (
        "abandoned",
        "admitted",
        "attempts",
        "deadline",
        "done",
        "emitted",
        "engine",
        "enqueued_at",
        "error",
        "finish_reason",
        "move_on",
        "ok",
        "priority",
        "receive",
        "request",
        "scope",
        "send",
        "state",
        "usage",
        "waited",
    )

    def __init__(
        self, engine: Engine, request: ChatRequest, priority: int, deadline: float
    ) -> None:
        self.engine = engine
        self.request = request
        self.priority = priority
        self.deadline = deadline
        self.send, self.receive = trio.open_memory_channel[StreamChunk](
            engine._config.stream_buffer
        )
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.admitted: trio.Event | None = None  # only for a wait for room
        self.state = WAITING
        self.enqueued_at = 0.0
        self.emitted = False  # a chunk went into the channel
        self.ok = False
        self.abandoned = False  # the reader closed its handle
        self.error: BaseException | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.attempts = 0
        self.waited = 0.0  # seconds on the queue
        # Asked by the endpoint before it retries a failure on itself: True moves the request
        # on to another endpoint instead (set by a deployment with somewhere else to go).
        self.move_on: Callable[[RakkaError], bool] | None = None

    def finish(self, error: BaseException | None = None) -> None:
        if self.state == QUEUED:
            self.waited = trio.current_time() - self.enqueued_at
        if self.state != DONE:
            self.state = DONE
            if error is not None and self.error is None:
                self.error = error
            self.send.close()
            self.done.set()


def estimate_tokens(request: ChatRequest) -> int:
    # The same rough measure as the limiter's admission estimate: ~4 characters per token.
    chars = sum(len(str(m.get("content", ""))) for m in request.messages)
    return max(1, chars // 4) + (request.max_tokens or 0)


def deadline_after(timeout: float | None) -> float:
    """The request's deadline: the caller's effective Trio deadline (the request belongs to
    the scope that submitted it), or ``timeout`` seconds from now if that is sooner."""
    deadline = trio.current_effective_deadline()
    if timeout is not None:
        deadline = min(deadline, trio.current_time() + timeout)
    return deadline


def deadline_error(config: EndpointConfig) -> DeadlineExceeded:
    return DeadlineExceeded("the request's deadline passed", phase="deadline", endpoint=config.name)
