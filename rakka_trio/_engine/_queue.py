"""The per-endpoint engine: a bounded priority queue feeding on-demand workers."""

from __future__ import annotations

from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING

import trio

from .._accounting import EndpointMeter
from .._config import EngineConfig
from .._errors import (
    Backpressure,
    BudgetExceeded,
    CircuitOpen,
    ContextLengthExceeded,
    RakkaError,
    UnknownEndpoint,
)
from .._events import BreakerState
from .._request import ChatRequest

if TYPE_CHECKING:
    pass
from ._job import Job, deadline_after, deadline_error, estimate_tokens
from ._submission import Submission
from ._types import (
    DEFAULT_WORKERS,
    DONE,
    QUEUED,
    RUNNING,
    WAITING,
    EngineStatistics,
    Priority,
    Spawn,
    Streamer,
)


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
        self._max = limit or DEFAULT_WORKERS
        # One deque per priority, allocated on first use: most of a large fleet's endpoints
        # never queue anything, and eight empty deques would be most of an idle engine.
        self._queues: tuple[deque[Job], ...] = ()
        self._waiting: tuple[deque[Job], ...] = ()
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
        sub = Submission(request, priority, deadline_after(None), [self])
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
                permit = breaker.check()
            except CircuitOpen as exc:
                raise self._refuse(exc, "circuit_open") from None
            breaker.release(permit)  # it moved to HALF_OPEN in between: let the call probe
        if self._meter is not None:
            try:
                self._meter.cost.check()
            except BudgetExceeded as exc:
                raise self._refuse(exc, "budget") from None
        window = self._endpoint.config.context_window
        if window is not None and (need := estimate_tokens(request)) > window:
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

    async def _admit(self, job: Job) -> None:
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

    async def _wait_for_room(self, job: Job) -> None:
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
        if job.state == WAITING:
            self._withdraw(job)
            if job.deadline <= limit:
                raise self._refuse(deadline_error(self._endpoint.config), "timeout")
            self._rejected += 1
            raise self._refuse(
                Backpressure(
                    f"endpoint {self._name!r} had no room within {self._config.queue_timeout:g}s"
                ),
                "backpressure",
            )
        if job.state == DONE:  # closed while we waited
            raise job.error or UnknownEndpoint(self._name)

    def _enqueue(self, job: Job) -> None:
        job.state = QUEUED
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

    def _withdraw(self, job: Job) -> None:
        """Take a job that never ran off the queue (or the wait for room)."""
        if job.state == WAITING:
            self._waiting[job.priority].remove(job)
            self._waiting_count -= 1
        elif job.state == QUEUED:
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

    def _pop(self) -> Job | None:
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

    async def _run(self, job: Job) -> None:
        now = trio.current_time()
        job.waited = now - job.enqueued_at
        if self._meter is not None:
            self._meter.queue_wait.record(job.waited)
        job.state = RUNNING
        if job.abandoned:  # its handle was dropped without closing
            self._count("cancelled")
            job.finish()
            return
        if now >= job.deadline:
            self._count("timeout")
            job.finish(deadline_error(self._endpoint.config))
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
                job.error = deadline_error(self._endpoint.config)
        finally:
            self._busy -= 1
            job.finish()
