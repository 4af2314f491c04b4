"""A submitted request: the receive side of its chunk channel, ending in one outcome."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from .._accounting import DeploymentMeter, outcome_of
from .._chunks import StreamChunk, Usage
from .._errors import (
    Backpressure,
    BudgetExceeded,
    CircuitOpen,
    ContextLengthExceeded,
    DeadlineExceeded,
    LimiterUnavailable,
    ProviderError,
    QuotaExhausted,
    RakkaError,
    RateLimitExceeded,
    UnknownEndpoint,
)
from .._request import ChatRequest, Completion
from ._job import Job, deadline_error
from ._routing import Router, capacity_error
from ._types import CLOSE_WAIT, DONE, QUEUED, RECOVERY_POLL, RUNNING, WAITING, Outcome, Priority

if TYPE_CHECKING:
    from ._queue import Engine

log = logging.getLogger("rakka_trio.engine")


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
    if isinstance(exc, DeadlineExceeded):
        return exc.retryable  # not when the request's own time is up: no endpoint can help
    if capacity_error(exc):
        return True  # no capacity on that server (even if it says not to retry *there*)
    # The endpoint's retries are exhausted (or it was not worth retrying there), or its
    # account is out of quota: another endpoint may well serve it.
    return isinstance(exc, QuotaExhausted) or (isinstance(exc, ProviderError) and exc.retryable)


class SubmitCall:
    """What ``submit(request)`` returns: use it as ``async with ep.submit(req) as sub:`` (the
    request is admitted on entry and the :class:`Submission` closed on exit), or ``await`` it
    for the :class:`Submission` itself.

    Admission happens when it is entered or awaited, so the caller's Trio deadline at that
    moment becomes the request's deadline.
    """

    __slots__ = ("_args", "_fn", "_sub")

    def __init__(
        self, fn: Callable[[ChatRequest, Priority], Awaitable[Submission]], *args: Any
    ) -> None:
        self._fn = fn
        self._args = args
        self._sub: Submission | None = None

    def __await__(self) -> Generator[Any, None, Submission]:
        return self._fn(*self._args).__await__()

    async def __aenter__(self) -> Submission:
        if self._sub is not None:
            raise RuntimeError("this submit(...) was already entered")
        self._sub = await self._fn(*self._args)
        return self._sub

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            await self._sub.aclose()


class Submission(trio.abc.ReceiveChannel[StreamChunk]):
    """A request admitted to an engine (``endpoint.submit(...)``) or a deployment.

    A :class:`trio.abc.ReceiveChannel` of :class:`~rakka_trio.StreamChunk`, like
    :class:`~rakka_trio.ChunkStream`: read its chunks with ``async for chunk in submission``
    or :meth:`receive` (:class:`trio.EndOfChannel` after the last), or everything at once
    with :meth:`result`. It ends with exactly one :attr:`outcome`: a completed stream ends
    the iteration, an error is raised from it. Closing it (``async with``, :meth:`aclose`)
    cancels the provider call or takes the request off the queue; :meth:`aclose` returns
    once the call has ended.
    """

    def __init__(
        self,
        request: ChatRequest,
        priority: Priority,
        deadline: float,
        chain: Sequence[Engine],
        *,
        router: Router | None = None,
        meter: DeploymentMeter | None = None,
        wait_for_recovery: bool = False,
        failover_on_first_error: bool = False,
    ) -> None:
        if not isinstance(priority, Priority):
            raise TypeError(f"priority must be a rakka_trio.Priority, got {priority!r}")
        self._request = request
        self._priority = priority
        self._deadline = deadline
        self._chain = chain
        self._router = router
        self._meter = meter
        self._wait_for_recovery = wait_for_recovery
        self._failover = failover_on_first_error
        self._visited: list[Engine] = []  # endpoints that took the request in this pass
        self._left: tuple[Engine, BaseException] | None = None  # failed there; moving on
        self._job: Job | None = None
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
            if job.state == DONE and job.ok:
                self._finish("ok", None)
            elif job.state == DONE and job.error is not None and not job.abandoned:
                self._finish("error", job.error)
            else:
                self._finish("cancelled", None)

    async def aclose(self) -> None:
        """Close, then wait (shielded, bounded) until the provider call has ended."""
        self.close()
        job = self._job
        if job is not None and not job.done.is_set():
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT):
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

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Only warn: a finaliser runs wherever the garbage collector does (another thread,
        # after the run), where touching the queue, a channel or a cancel scope is unsafe.
        job = getattr(self, "_job", None)
        if job is not None and not getattr(self, "_closed", True) and job.state != DONE:
            _warn(
                f"{self!r} was garbage-collected without being closed: its request still holds "
                "its place or worker until it ends (use `async with`)",
                ResourceWarning,
                source=self,
            )

    def __repr__(self) -> str:
        state = self._outcome.status if self._outcome is not None else "open"
        return f"<Submission {self._priority.name} on {self.endpoint!r} {state}>"

    # --- internals ----------------------------------------------------------------------

    @staticmethod
    def _abandon(job: Job) -> None:
        """The reader is gone: take the job off the queue or cancel its call."""
        job.receive.close()
        if job.state in (WAITING, QUEUED):
            job.engine._withdraw(job)
            job.engine._count("cancelled")
            job.abandoned = True
            job.finish()
        elif job.state == RUNNING:
            job.abandoned = True
            job.scope.cancel()

    async def _start(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            await self._admit()
        except BaseException as exc:
            # Refused everywhere: no handle is returned, so the deployment's count is here.
            if self._meter is not None:
                self._meter.count(outcome_of(exc), exc)
            raise

    async def _admit(self) -> None:
        """Admit the request to the best endpoint that can take it now.

        Endpoints are taken in the router's order; one that refuses (breaker, budget, queue
        full, context window) is skipped, and one that would make the request wait (a paused
        or short rate-limit key, a full queue under ``on_full="queue"``) is kept for later:
        only when no endpoint can serve at once does the request wait, where the wait is
        shortest. Never awaits except to wait for room, or for a breaker to recover.
        """
        request = self._request
        while True:
            candidates = [e for e in self._chain if e not in self._visited]
            if self._router is not None:
                candidates = self._router.rank(candidates)
            refusals: list[RakkaError] = []
            passed: list[tuple[int, Engine, str]] = []  # (rank, endpoint, cause) skipped
            later: list[tuple[float, int, Engine]] = []  # (wait, rank, endpoint)
            for rank, engine in enumerate(candidates):
                refused = engine.refuse(request)
                if refused is None and len(candidates) > 1:
                    wait = engine.wait_estimate(request)
                    if wait > 0.0:
                        full = math.isinf(wait) and engine.full
                        cause = "Backpressure" if full else "RateLimitExceeded"
                        later.append((wait, rank, engine))
                        passed.append((rank, engine, cause))
                        continue
                if refused is None:
                    refused = await self._enter(engine, rank, passed)
                    if refused is None:
                        return
                refusals.append(refused)
                if not _falls_back(refused, engine, request):
                    raise self._chained(refused)
                passed.append((rank, engine, type(refused).__name__))
            # Nobody can serve at once: wait where the wait is shortest.
            later.sort(key=lambda item: item[:2])
            for _wait, rank, engine in later:
                passed = [p for p in passed if p[1] is not engine]
                refused = engine.refuse(request)
                if refused is None:
                    refused = await self._enter(engine, rank, passed)
                    if refused is None:
                        return
                refusals.append(refused)
                if not _falls_back(refused, engine, request):
                    raise self._chained(refused)
                passed.append((rank, engine, type(refused).__name__))
            if not refusals:  # every endpoint of the chain already failed this request
                assert self._left is not None
                raise self._left[1]
            wake = self._recovery_time(refusals, len(candidates))
            if wake is None:
                raise self._chained(refusals[-1])
            if self._meter is not None:
                self._meter.recovery_waits += 1
            await trio.sleep_until(wake)
            self._visited.clear()  # the preferred endpoints first again

    async def _enter(
        self, engine: Engine, rank: int, passed: list[tuple[int, Engine, str]]
    ) -> RakkaError | None:
        """Queue the request on ``engine`` (just checked); its refusal, or ``None``."""
        job = Job(engine, self._request, self._priority, self._deadline)
        if len(self._chain) > 1:
            job.move_on = self._move_on
        self._visited.append(engine)
        try:
            await engine._admit(job, checked=True)
        except RakkaError as exc:
            return exc
        # Count the moves that brought the request here: from the endpoint it failed on, and
        # from every endpoint the strategy preferred but that could not serve it.
        if self._left is not None:
            left, error = self._left
            self._left = None
            if left is not engine:
                self._moved(left, engine, type(error).__name__)
        for skipped_rank, skipped, cause in passed:
            if skipped_rank < rank and skipped is not engine:
                self._moved(skipped, engine, cause)
        self._job = job
        if self._closed:  # closed by another task while this one moved it on
            self._abandon(job)
            raise trio.ClosedResourceError("the submission was closed")
        return None

    def _chained(self, refusal: RakkaError) -> RakkaError:
        """The error to raise when no endpoint takes the request: the last refusal, caused
        by the failure that made the request move on, if any."""
        if self._left is not None and refusal.__cause__ is None:
            refusal.__cause__ = self._left[1]
        return refusal

    def _move_on(self, exc: RakkaError) -> bool:
        """Asked by the serving endpoint before it retries ``exc`` on itself (no output was
        delivered): True when the request should move on instead, because the error says
        "no capacity here" (or, with ``failover_on_first_error``, counts against the
        breaker) and another endpoint can serve it right now."""
        if not (capacity_error(exc) or (self._failover and exc.counts_as_circuit_failure)):
            return False
        request = self._request
        return any(
            engine not in self._visited and engine.can_serve_now(request) for engine in self._chain
        )

    def _recovery_time(self, refusals: list[RakkaError], tried: int) -> float | None:
        """When to try the chain again if every endpoint is cooling down (else ``None``)."""
        if not self._wait_for_recovery or len(refusals) < tried:
            return None
        if not all(isinstance(exc, CircuitOpen) for exc in refusals):
            return None
        retry_at = min(exc.retry_at for exc in refusals if isinstance(exc, CircuitOpen))
        wake = max(retry_at, trio.current_time() + RECOVERY_POLL)
        return wake if wake < self._deadline else None

    def _moved(self, left: Engine, to: Engine, cause: str) -> None:
        self._fallbacks.append(left.name)
        if self._meter is not None:
            self._meter.fallback(left.name, to.name, cause)
        log.info("request moves on from %s to %s (%s)", left.name, to.name, cause)

    async def _wait(self, job: Job) -> StreamChunk:
        """Wait for the job's next chunk; a deadline passed while still queued ends it."""
        if job.state == QUEUED and self._deadline < math.inf:
            with trio.move_on_at(self._deadline):
                return await job.receive.receive()
            if job.state == QUEUED:
                job.engine._withdraw(job)
                job.engine._count("timeout")
                job.finish(deadline_error(job.engine.endpoint.config))
        return await job.receive.receive()

    async def _ended(self, job: Job) -> None:
        """The job's channel is drained: finish, or move on to the next endpoint."""
        if job.ok:
            self._finish("ok", None)
            raise trio.EndOfChannel
        exc = job.error or UnknownEndpoint(job.engine.name)  # worker cancelled: engine closed
        if (
            not self._delivered
            and any(engine not in self._visited for engine in self._chain)
            and _falls_back(exc, job.engine, self._request)
        ):
            self._queued += job.waited
            self._left = (job.engine, exc)
            self._collected.clear()  # a result() in progress drops the partial output
            try:
                await self._admit()
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
            self._meter.count(label, error)
