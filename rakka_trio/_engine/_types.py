"""Engine value types (priorities, outcomes, statistics) and the protocols the engine drives."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Literal, Protocol

import attrs

from .._chunks import StreamChunk, Usage
from .._config import EndpointConfig
from .._errors import RakkaError
from .._request import ChatRequest

if TYPE_CHECKING:
    from .._breaker import BreakerHandle


DEFAULT_WORKERS = 64  # when neither the engine nor the limiter sets max_concurrent
RECOVERY_POLL = 0.05  # least wait between passes over a chain whose breakers are half-open
CLOSE_WAIT = 10.0  # longest aclose() waits for a cancelled call to finish its cleanup


class Priority(enum.IntEnum):
    """Request priority on an engine queue: CRITICAL is served before HIGH, HIGH before
    NORMAL, NORMAL before BACKGROUND; FIFO within a class."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    BACKGROUND = 3


@attrs.frozen(kw_only=True)
class Outcome:
    """How a submitted request ended; every :class:`Submission` gets exactly one.

    ``status`` is ``ok`` (the provider's stream completed), ``error`` (``error`` says why; it
    is also raised to the reader) or ``cancelled`` (the handle was closed before the end).
    ``endpoint`` served the request (or was tried last); ``fallbacks`` lists the endpoints
    left behind, in order. ``attempts`` counts tries on the serving endpoint, ``queued`` the
    seconds spent in engine queues.
    """

    status: Literal["ok", "error", "cancelled"]
    endpoint: str | None
    error: BaseException | None = attrs.field(default=None, eq=False)
    usage: Usage | None = None
    finish_reason: str | None = None
    attempts: int = 0
    fallbacks: tuple[str, ...] = ()
    queued: float = 0.0


@attrs.frozen(kw_only=True)
class EngineStatistics:
    """A snapshot of one endpoint's engine.

    ``queue_depth`` requests wait (``queued`` by priority name), ``waiting_for_room``
    submitters wait for space under ``on_full="queue"``; ``busy_workers`` of ``workers`` are
    serving a request; ``max_concurrent`` is the worker limit now (halved by a ``throttle``
    budget). ``submitted`` counts admitted requests, ``rejected`` those refused for capacity.
    """

    endpoint: str
    queue_depth: int
    queued: Mapping[str, int]
    waiting_for_room: int
    busy_workers: int
    workers: int
    max_concurrent: int
    queue_size: int
    on_full: str
    submitted: int
    rejected: int


class ChunkSource(Protocol):
    """What ``Endpoint.stream`` yields (:class:`~rakka_trio.ChunkStream`)."""

    attempts: int

    @property
    def usage(self) -> Usage | None: ...

    @property
    def finish_reason(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...


class Streamer(Protocol):
    """What an engine needs of its endpoint (:class:`~rakka_trio.Endpoint`)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> EndpointConfig: ...

    @property
    def breaker(self) -> BreakerHandle: ...

    def stream(
        self, request: ChatRequest, *, move_on: Callable[[RakkaError], bool] | None = None
    ) -> AbstractAsyncContextManager[ChunkSource]: ...

    def wait_estimate(self, request: ChatRequest) -> float:
        """Seconds the rate limiter would make ``request`` wait now (takes nothing)."""
        ...

    def headroom(self) -> float:
        """Rate-limit capacity left, 0..1 (1.0 without limits)."""
        ...


Spawn = Callable[..., None]  # Supervisor.start_task(name, async_fn, *args)

# Job states
WAITING = 0  # waiting for room in the queue (on_full="queue")
QUEUED = 1
RUNNING = 2
DONE = 3
