"""The engine path (DESIGN §4.7): priority queues, worker pools and fallback chains.

Each endpoint owns an :class:`Engine`: a bounded queue with four priority classes
(CRITICAL > HIGH > NORMAL > BACKGROUND, FIFO within a class) feeding up to ``max_concurrent``
worker tasks in the supervisor's nursery. Workers start on demand and leave after
``idle_timeout`` idle seconds, so a thousand quiet endpoints cost no tasks.

``await endpoint.submit(request)`` admits a request or raises at once (``Backpressure``,
``CircuitOpen``, ``BudgetExceeded``, ``ContextLengthExceeded``) and returns a
:class:`Submission`: the receive side of a bounded chunk channel that ends with exactly one
terminal :class:`Outcome`. Closing it cancels the provider call (or takes the request off the
queue). A worker streams through ``Endpoint.stream``, so breaker, limiter, retries and metrics
are the same as for a direct call.

A :class:`Deployment` submits to its endpoints in order. A request moves on to the next
endpoint when an endpoint refuses it (breaker open, capacity exhausted under ``fallback``,
budget, context window too small) or fails it before any output reached the caller (retries
exhausted or nothing worth retrying). The reader's own task drives these moves: no task and no
extra channel hop per request.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

import attrs
import trio

from ._chunks import StreamChunk, Usage
from ._config import DeploymentConfig, EndpointConfig, EngineConfig
from ._errors import (
    Backpressure,
    BudgetExceeded,
    CircuitOpen,
    ContextLengthExceeded,
    LimiterUnavailable,
    ProviderError,
    QuotaExhausted,
    RakkaError,
    RateLimitExceeded,
    Timeout,
    UnknownEndpoint,
)
from ._events import BreakerState
from ._metrics import DeploymentMeter, DeploymentStatistics, EndpointMeter, outcome_of
from ._request import ChatRequest, Completion

if TYPE_CHECKING:
    from ._breaker import BreakerHandle

__all__ = [
    "Deployment",
    "Engine",
    "EngineStatistics",
    "Outcome",
    "Priority",
    "Submission",
]

log = logging.getLogger("rakka_trio.engine")

_DEFAULT_WORKERS = 64  # when neither the engine nor the limiter sets max_concurrent
_RECOVERY_POLL = 0.05  # least wait between passes over a chain whose breakers are half-open
_CLOSE_WAIT = 10.0  # longest aclose() waits for a cancelled call to finish its cleanup


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

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[ChunkSource]: ...


Spawn = Callable[..., None]  # Supervisor.start_task(name, async_fn, *args)

# Job states
_WAITING = 0  # waiting for room in the queue (on_full="queue")
_QUEUED = 1
_RUNNING = 2
_DONE = 3


class _Job:
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
        self.state = _WAITING
        self.enqueued_at = 0.0
        self.emitted = False  # a chunk went into the channel
        self.ok = False
        self.abandoned = False  # the reader closed its handle
        self.error: BaseException | None = None
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.attempts = 0
        self.waited = 0.0  # seconds on the queue

    def finish(self, error: BaseException | None = None) -> None:
        if self.state == _QUEUED:
            self.waited = trio.current_time() - self.enqueued_at
        if self.state != _DONE:
            self.state = _DONE
            if error is not None and self.error is None:
                self.error = error
            self.send.close()
            self.done.set()


def _estimate_tokens(request: ChatRequest) -> int:
    # The same rough measure as the limiter's admission estimate: ~4 characters per token.
    chars = sum(len(str(m.get("content", ""))) for m in request.messages)
    return max(1, chars // 4) + (request.max_tokens or 0)


class Engine:
    """The queue and workers of one endpoint. Built by the supervisor; use
    ``endpoint.submit`` or a :class:`Deployment`."""

    def __init__(
        self,
        endpoint: Streamer,
        config: EngineConfig,
        *,
        spawn: Spawn,
        meter: EndpointMeter | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._name = endpoint.name
        self._config = config
        self._spawn = spawn
        self._meter = meter
        limit = config.max_concurrent or endpoint.config.limits.max_concurrent
        self._max = limit or _DEFAULT_WORKERS
        # One deque per priority, allocated on first use: most of a large fleet's endpoints
        # never queue anything, and eight empty deques would be most of an idle engine.
        self._queues: tuple[deque[_Job], ...] = ()
        self._waiting: tuple[deque[_Job], ...] = ()
        self._depth = 0
        self._waiting_count = 0
        self._busy = 0
        self._workers = 0
        self._starting = 0  # spawned, not yet running
        self._idle = trio.lowlevel.ParkingLot()
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False
        self._submitted = 0
        self._rejected = 0

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self._name

    @property
    def config(self) -> EngineConfig:
        """The engine configuration."""
        return self._config

    @property
    def endpoint(self) -> Streamer:
        """The endpoint this engine calls."""
        return self._endpoint

    @property
    def max_concurrent(self) -> int:
        """The worker limit now: ``max_concurrent``, halved while a ``throttle`` budget is
        exceeded."""
        if self._meter is not None and self._meter.cost.throttled:
            return max(1, self._max // 2)
        return self._max

    async def submit(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Submission:
        """Queue ``request`` (see :meth:`Endpoint.submit <rakka_trio.Endpoint.submit>`)."""
        sub = Submission(request, priority, _deadline(None), [self])
        await sub._start()
        return sub

    def statistics(self) -> EngineStatistics:
        """A snapshot of the queue and the workers."""
        return EngineStatistics(
            endpoint=self._name,
            queue_depth=self._depth,
            queued=MappingProxyType(
                {p.name: len(self._queues[p]) if self._queues else 0 for p in Priority}
            ),
            waiting_for_room=self._waiting_count,
            busy_workers=self._busy,
            workers=self._workers,
            max_concurrent=self.max_concurrent,
            queue_size=self._config.queue_size,
            on_full=self._config.on_full,
            submitted=self._submitted,
            rejected=self._rejected,
        )

    def close(self) -> None:
        """Stop: queued requests fail with :class:`UnknownEndpoint` (a deployment moves them
        on), running calls are cancelled, workers end."""
        if self._closed:
            return
        self._closed = True
        for queues in (self._queues, self._waiting):
            for queue in queues:
                while queue:
                    job = queue.popleft()
                    self._count("cancelled")
                    job.finish(UnknownEndpoint(self._name))
        self._depth = self._waiting_count = 0
        for scope in self._scopes:
            scope.cancel()
        self._idle.unpark_all()

    def __repr__(self) -> str:
        return (
            f"<Engine {self._name!r} queued={self._depth} busy={self._busy}/{self.max_concurrent}>"
        )

    # --- admission ----------------------------------------------------------------------

    def _count(self, label: str) -> None:
        if self._meter is not None:
            self._meter.count(label)

    def _refuse(self, exc: RakkaError, label: str) -> RakkaError:
        self._count(label)
        return exc

    def _precheck(self, request: ChatRequest) -> None:
        """Refusals known without queueing: closed, breaker open, budget, context window."""
        if self._closed:
            raise UnknownEndpoint(self._name)
        breaker = self._endpoint.breaker
        if breaker.state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            # Fail fast with the breaker's own CircuitOpen (its retry_at drives recovery
            # waits); an OPEN breaker refuses without taking a probe permit.
            try:
                token = breaker._acquire()
            except CircuitOpen as exc:
                raise self._refuse(exc, "circuit_open") from None
            breaker._release(token)  # it moved to HALF_OPEN in between: let the call probe
        if self._meter is not None:
            try:
                self._meter.cost.check()
            except BudgetExceeded as exc:
                raise self._refuse(exc, "budget") from None
        window = self._endpoint.config.context_window
        if window is not None and (need := _estimate_tokens(request)) > window:
            raise self._refuse(
                ContextLengthExceeded(
                    f"request needs about {need} tokens; the context window is {window}",
                    provider=self._endpoint.config.provider,
                    endpoint=self._name,
                ),
                "4xx",
            )

    def _has_room(self) -> bool:
        return self._busy + self._depth < self.max_concurrent + self._config.queue_size

    async def _admit(self, job: _Job) -> None:
        """Put ``job`` on the queue, wait for room (``queue`` policy) or raise."""
        self._precheck(job.request)
        if self._has_room() and not self._waiting_count:
            self._enqueue(job)
            return
        if self._config.on_full != "queue":
            self._rejected += 1
            raise self._refuse(
                Backpressure(
                    f"endpoint {self._name!r} is at capacity ({self._busy} running, "
                    f"{self._depth} queued)"
                ),
                "backpressure",
            )
        await self._wait_for_room(job)

    async def _wait_for_room(self, job: _Job) -> None:
        job.admitted = trio.Event()
        if not self._waiting:
            self._waiting = tuple(deque() for _ in Priority)
        self._waiting[job.priority].append(job)
        self._waiting_count += 1
        limit = trio.current_time() + self._config.queue_timeout
        try:
            with trio.move_on_at(min(limit, job.deadline)):
                await job.admitted.wait()
        except BaseException:
            # Cancelled (or closed) while waiting: the job must not stay queued for nobody.
            self._withdraw(job)
            raise
        if job.state == _WAITING:
            self._withdraw(job)
            if job.deadline <= limit:
                raise self._refuse(_deadline_error(self._endpoint.config), "timeout")
            self._rejected += 1
            raise self._refuse(
                Backpressure(
                    f"endpoint {self._name!r} had no room within {self._config.queue_timeout:g}s"
                ),
                "backpressure",
            )
        if job.state == _DONE:  # closed while we waited
            raise job.error or UnknownEndpoint(self._name)

    def _enqueue(self, job: _Job) -> None:
        job.state = _QUEUED
        job.enqueued_at = trio.current_time()
        if not self._queues:
            self._queues = tuple(deque() for _ in Priority)
        self._queues[job.priority].append(job)
        self._depth += 1
        self._submitted += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """A job is queued: wake an idle worker, or start one if under the limit."""
        if self._idle.unpark(count=1):
            return
        if self._workers + self._starting < self.max_concurrent:
            self._starting += 1
            self._spawn(f"engine:{self._name}", self._worker)

    def _withdraw(self, job: _Job) -> None:
        """Take a job that never ran off the queue (or the wait for room)."""
        if job.state == _WAITING:
            self._waiting[job.priority].remove(job)
            self._waiting_count -= 1
        elif job.state == _QUEUED:
            self._queues[job.priority].remove(job)
            self._depth -= 1
            self._refill()

    def _refill(self) -> None:
        """Room was made: move the best waiting job onto the queue."""
        while self._waiting_count and self._has_room():
            for waiting in self._waiting:
                if waiting:
                    job = waiting.popleft()
                    break
            else:  # pragma: no cover - _waiting_count says there is one
                return
            self._waiting_count -= 1
            self._enqueue(job)
            assert job.admitted is not None
            job.admitted.set()

    def _pop(self) -> _Job | None:
        if not self._depth:
            return None
        for queue in self._queues:
            if queue:
                job = queue.popleft()
                self._depth -= 1
                return job
        return None  # pragma: no cover - _depth says there is one

    # --- workers ------------------------------------------------------------------------

    async def _worker(self) -> None:
        if self._starting:
            self._starting -= 1
        self._workers += 1
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                if self._closed:
                    return
                while True:
                    if self._workers > self.max_concurrent:
                        return  # throttled: the pool shrinks as workers come free
                    job = self._pop()
                    if job is None:
                        with trio.move_on_after(self._config.idle_timeout) as idle:
                            await self._idle.park()
                        if self._closed or (idle.cancelled_caught and not self._depth):
                            return
                        continue
                    await self._run(job)
                    self._refill()
        finally:
            self._workers -= 1
            self._scopes.discard(scope)

    async def _run(self, job: _Job) -> None:
        now = trio.current_time()
        job.waited = now - job.enqueued_at
        if self._meter is not None:
            self._meter.queue_wait.record(job.waited)
        job.state = _RUNNING
        if job.abandoned:  # its handle was dropped without closing
            self._count("cancelled")
            job.finish()
            return
        if now >= job.deadline:
            self._count("timeout")
            job.finish(_deadline_error(self._endpoint.config))
            return
        self._busy += 1
        scope = job.scope
        scope.deadline = job.deadline
        try:
            with scope:
                try:
                    async with self._endpoint.stream(job.request) as chunks:
                        job.attempts = chunks.attempts
                        send = job.send
                        async for chunk in chunks:
                            job.emitted = True
                            try:
                                send.send_nowait(chunk)
                            except trio.WouldBlock:
                                await send.send(chunk)  # a slow reader holds this worker
                        job.usage = chunks.usage
                        job.finish_reason = chunks.finish_reason
                    job.ok = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    job.abandoned = True  # the reader closed its handle mid-stream
                except Exception as exc:  # the call's error is the job's outcome
                    job.error = exc
            if scope.cancelled_caught and not job.abandoned and job.error is None:
                job.error = _deadline_error(self._endpoint.config)
        finally:
            self._busy -= 1
            job.finish()


def _deadline(timeout: float | None) -> float:
    """The request's deadline: the caller's effective Trio deadline (the request belongs to
    the scope that submitted it), or ``timeout`` seconds from now if that is sooner."""
    deadline = trio.current_effective_deadline()
    if timeout is not None:
        deadline = min(deadline, trio.current_time() + timeout)
    return deadline


def _deadline_error(config: EndpointConfig) -> Timeout:
    return Timeout(
        "the request's deadline passed",
        phase="deadline",
        provider=config.provider,
        endpoint=config.name,
    )


# Errors raised before anything was sent: safe to take elsewhere even for requests that must
# not be repeated.
_UNSENT = (
    CircuitOpen,
    Backpressure,
    BudgetExceeded,
    RateLimitExceeded,
    LimiterUnavailable,
    ContextLengthExceeded,
    UnknownEndpoint,
)


def _falls_back(exc: BaseException, engine: Engine, request: ChatRequest) -> bool:
    """Whether a deployment moves on to its next endpoint after ``exc`` (nothing delivered)."""
    if isinstance(exc, Backpressure):
        return engine.config.on_full == "fallback"
    if isinstance(exc, _UNSENT):
        return True
    if not request.idempotent:
        return False
    if isinstance(exc, Timeout) and exc.phase == "deadline":
        return False  # the request's own time is up: no endpoint can help
    # The endpoint's retries are exhausted (or it was not worth retrying there), or its
    # account is out of quota: another endpoint may well serve it.
    return isinstance(exc, QuotaExhausted) or (isinstance(exc, ProviderError) and exc.retryable)


class Submission:
    """A request admitted to an engine (``await endpoint.submit(...)``) or a deployment.

    Read its chunks with ``async for chunk in submission`` (or :meth:`receive`), or
    everything at once with :meth:`result`. It ends with exactly one :attr:`outcome`: a
    completed stream ends the iteration, an error is raised from it. Use it as
    ``async with submission:`` — closing it cancels the provider call (or takes the request
    off the queue); :meth:`aclose` returns once the call has ended.
    """

    def __init__(
        self,
        request: ChatRequest,
        priority: Priority,
        deadline: float,
        chain: Sequence[Engine],
        *,
        meter: DeploymentMeter | None = None,
        wait_for_recovery: bool = False,
    ) -> None:
        if not isinstance(priority, Priority):
            raise TypeError(f"priority must be a rakka_trio.Priority, got {priority!r}")
        self._request = request
        self._priority = priority
        self._deadline = deadline
        self._chain = chain
        self._meter = meter
        self._wait_for_recovery = wait_for_recovery
        self._index = 0
        self._job: _Job | None = None
        self._fallbacks: list[str] = []
        self._queued = 0.0
        self._delivered = False  # a chunk reached the reader
        self._collecting = False  # result(): nothing reaches the reader before the end
        self._collected: list[StreamChunk] = []
        self._outcome: Outcome | None = None
        self._closed = False

    # --- public -------------------------------------------------------------------------

    @property
    def request(self) -> ChatRequest:
        """The request."""
        return self._request

    @property
    def priority(self) -> Priority:
        """The request's priority."""
        return self._priority

    @property
    def endpoint(self) -> str | None:
        """The endpoint serving the request now (after fallbacks, the last one tried)."""
        return self._job.engine.name if self._job is not None else None

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """Endpoints left behind so far, in order."""
        return tuple(self._fallbacks)

    @property
    def outcome(self) -> Outcome | None:
        """The terminal outcome, ``None`` until the request ended."""
        return self._outcome

    @property
    def usage(self) -> Usage | None:
        """The token usage the provider reported (``None`` so far)."""
        return self._job.usage if self._job is not None else None

    @property
    def finish_reason(self) -> str | None:
        """The normalised finish reason once the provider sent it."""
        return self._job.finish_reason if self._job is not None else None

    async def receive(self) -> StreamChunk:
        """The next chunk. Raises :class:`trio.EndOfChannel` after the last one, the request's
        error if it failed (once; then ``EndOfChannel``), and
        :class:`trio.ClosedResourceError` once closed."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the submission was closed")
            job = self._job
            if job is None or self._outcome is not None:
                raise trio.EndOfChannel
            try:
                try:
                    chunk = job.receive.receive_nowait()
                except trio.WouldBlock:
                    chunk = await self._wait(job)
            except trio.EndOfChannel:
                pass  # handled below, outside the except block (clean error tracebacks)
            else:
                if not self._collecting:
                    self._delivered = True
                return chunk
            await self._ended(job)  # raises, or moved on to the next endpoint

    def __aiter__(self) -> Submission:
        return self

    async def __anext__(self) -> StreamChunk:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def result(self) -> Completion:
        """Read the whole response and return it as a :class:`Completion`.

        Nothing reaches the caller before the end, so a deployment may still fall back after
        an endpoint failed midway (its partial output is discarded).
        """
        if self._delivered:
            raise RuntimeError("result() needs a submission nothing was read from")
        self._collecting = True
        chunks = self._collected
        try:
            while True:
                try:
                    chunks.append(await self.receive())
                except trio.EndOfChannel:
                    break
        finally:
            self._collecting = False
        job = self._job
        assert job is not None
        done = Completion.from_chunks(chunks, endpoint=job.engine.name, attempts=job.attempts)
        if done.usage is None and job.usage is not None:
            done = attrs.evolve(done, usage=job.usage)
        return done

    def close(self) -> None:
        """Stop now: cancel the provider call or take the request off the queue. The call's
        cleanup finishes in its worker; :meth:`aclose` waits for it."""
        if self._closed:
            return
        self._closed = True
        job = self._job
        if job is None:
            return
        self._abandon(job)
        if self._outcome is None:
            if job.state == _DONE and job.ok:
                self._finish("ok", None)
            elif job.state == _DONE and job.error is not None and not job.abandoned:
                self._finish("error", job.error)
            else:
                self._finish("cancelled", None)

    async def aclose(self) -> None:
        """Close, then wait (shielded, bounded) until the provider call has ended."""
        self.close()
        job = self._job
        if job is not None and not job.done.is_set():
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_WAIT):
                await job.done.wait()

    async def __aenter__(self) -> Submission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A handle dropped without closing must not hold a worker forever on a full channel.
        job = getattr(self, "_job", None)
        if job is not None and not self._closed and job.state != _DONE:
            # Only flag it: a finaliser may run anywhere (even after the run), so the queue is
            # left alone and a worker that picks the job up drops it.
            job.abandoned = True
            job.receive.close()
            job.scope.cancel()

    def __repr__(self) -> str:
        state = self._outcome.status if self._outcome is not None else "open"
        return f"<Submission {self._priority.name} on {self.endpoint!r} {state}>"

    # --- internals ----------------------------------------------------------------------

    @staticmethod
    def _abandon(job: _Job) -> None:
        """The reader is gone: take the job off the queue or cancel its call."""
        job.receive.close()
        if job.state in (_WAITING, _QUEUED):
            job.engine._withdraw(job)
            job.engine._count("cancelled")
            job.abandoned = True
            job.finish()
        elif job.state == _RUNNING:
            job.abandoned = True
            job.scope.cancel()

    async def _start(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            await self._admit(0)
        except BaseException as exc:
            # Refused everywhere: no handle is returned, so the deployment's count is here.
            if self._meter is not None:
                self._meter.requests[outcome_of(exc)] += 1
            raise

    async def _admit(self, start: int) -> None:
        """Admit the request to the first endpoint from ``start`` that takes it."""
        chain = self._chain
        while True:
            refusals: list[RakkaError] = []
            for index in range(start, len(chain)):
                engine = chain[index]
                job = _Job(engine, self._request, self._priority, self._deadline)
                try:
                    await engine._admit(job)
                except RakkaError as exc:
                    if index == len(chain) - 1 or not _falls_back(exc, engine, self._request):
                        refusals.append(exc)
                        break
                    self._moved(engine, exc)
                    refusals.append(exc)
                    continue
                self._job, self._index = job, index
                if self._closed:  # closed by another task while this one moved it on
                    self._abandon(job)
                    raise trio.ClosedResourceError("the submission was closed")
                return
            wake = self._recovery_time(refusals, len(chain) - start)
            if wake is None:
                raise refusals[-1]
            if self._meter is not None:
                self._meter.recovery_waits += 1
            await trio.sleep_until(wake)
            start = 0  # the preferred endpoints first again

    def _recovery_time(self, refusals: list[RakkaError], tried: int) -> float | None:
        """When to try the chain again if every endpoint is cooling down (else ``None``)."""
        if not self._wait_for_recovery or len(refusals) < tried:
            return None
        if not all(isinstance(exc, CircuitOpen) for exc in refusals):
            return None
        retry_at = min(exc.retry_at for exc in refusals if isinstance(exc, CircuitOpen))
        wake = max(retry_at, trio.current_time() + _RECOVERY_POLL)
        return wake if wake < self._deadline else None

    def _moved(self, engine: Engine, exc: BaseException) -> None:
        self._fallbacks.append(engine.name)
        if self._meter is not None:
            self._meter.fallback(engine.name, exc)
        log.info("request moves on from %s (%s)", engine.name, type(exc).__name__)

    async def _wait(self, job: _Job) -> StreamChunk:
        """Wait for the job's next chunk; a deadline passed while still queued ends it."""
        if job.state == _QUEUED and self._deadline < math.inf:
            with trio.move_on_at(self._deadline):
                return await job.receive.receive()
            if job.state == _QUEUED:
                job.engine._withdraw(job)
                job.engine._count("timeout")
                job.finish(_deadline_error(job.engine.endpoint.config))
        return await job.receive.receive()

    async def _ended(self, job: _Job) -> None:
        """The job's channel is drained: finish, or move on to the next endpoint."""
        if job.ok:
            self._finish("ok", None)
            raise trio.EndOfChannel
        exc = job.error or UnknownEndpoint(job.engine.name)  # worker cancelled: engine closed
        if (
            not self._delivered
            and self._index < len(self._chain) - 1
            and _falls_back(exc, job.engine, self._request)
        ):
            self._queued += job.waited
            self._moved(job.engine, exc)
            self._collected.clear()  # a result() in progress drops the partial output
            try:
                await self._admit(self._index + 1)
            except BaseException as refusal:
                if isinstance(refusal, RakkaError):
                    self._finish("error", refusal)
                raise
            return
        self._finish("error", exc)
        raise exc

    def _finish(
        self, status: Literal["ok", "error", "cancelled"], error: BaseException | None
    ) -> None:
        if self._outcome is not None:
            return
        job = self._job
        self._outcome = Outcome(
            status=status,
            endpoint=job.engine.name if job is not None else None,
            error=error,
            usage=job.usage if job is not None else None,
            finish_reason=job.finish_reason if job is not None else None,
            attempts=job.attempts if job is not None else 0,
            fallbacks=tuple(self._fallbacks),
            queued=self._queued + (job.waited if job is not None else 0.0),
        )
        if self._meter is not None:
            label = "cancelled" if status == "cancelled" else outcome_of(error, self.finish_reason)
            self._meter.requests[label] += 1


class Deployment:
    """A named fallback chain over endpoints (``sup.deployment("chat")``; DESIGN §4.7).

    ``stream``, ``complete`` and ``submit`` go through the endpoints' engines in order. A
    request moves on when an endpoint's breaker is open, its capacity is exhausted (with
    ``on_full="fallback"``), its budget rejects, the request is too large for its context
    window, or it failed before any output reached the caller with an error its retries could
    not fix (server errors, timeouts, network errors, rate limits, exhausted quota). It never
    moves after output was delivered, and requests marked ``idempotent=False`` move only on
    refusals that sent nothing. With ``wait_for_recovery``, a request that finds every breaker
    open waits for the first to recover, within its deadline.

    Leave ``request.model`` unset so each endpoint uses its own configured model.
    """

    def __init__(
        self,
        config: DeploymentConfig,
        engines: Callable[[str], Engine | None],
        meter: DeploymentMeter | None = None,
    ) -> None:
        self._config = config
        self._engines = engines
        self._meter = meter if meter is not None else DeploymentMeter(config.name)

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self._config.name

    @property
    def config(self) -> DeploymentConfig:
        """The deployment's configuration."""
        return self._config

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The chain's endpoint names, in order."""
        return tuple(self._config.endpoints)

    async def submit(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Submission:
        """Admit ``request`` to the first endpoint that takes it; returns the
        :class:`Submission`.

        The request's deadline is the caller's effective Trio deadline (``with
        trio.fail_after(...)`` around the call), or the deployment's ``timeout`` if sooner; it
        bounds everything: queueing, fallbacks, waits for recovery and the calls.
        """
        chain = [e for e in map(self._engines, self._config.endpoints) if e is not None]
        if not chain:
            raise UnknownEndpoint(self._config.endpoints[0])
        sub = Submission(
            request,
            priority,
            _deadline(self._config.timeout),
            chain,
            meter=self._meter,
            wait_for_recovery=self._config.wait_for_recovery,
        )
        await sub._start()
        return sub

    @asynccontextmanager
    async def stream(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> AsyncIterator[Submission]:
        """``async with dep.stream(req) as chunks: async for chunk in chunks`` through the
        chain; leaving the block closes the submission (cancelling the call)."""
        sub = await self.submit(request, priority=priority)
        async with sub:
            yield sub

    async def complete(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Completion:
        """The whole completion through the chain (``Completion.endpoint`` says which
        endpoint served it)."""
        sub = await self.submit(request, priority=priority)
        async with sub:
            return await sub.result()

    def statistics(self) -> DeploymentStatistics:
        """Requests by final outcome and fallbacks so far."""
        return self._meter.snapshot(self._config.endpoints)

    def __repr__(self) -> str:
        return f"<Deployment {self.name!r} {' -> '.join(self._config.endpoints)}>"
