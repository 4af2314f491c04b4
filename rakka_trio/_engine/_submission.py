"""A submitted request: the receive side of its chunk channel, ending in one outcome."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal

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

if TYPE_CHECKING:
    from ._queue import Engine
from ._job import Job, deadline_error
from ._types import CLOSE_WAIT, DONE, QUEUED, RECOVERY_POLL, RUNNING, WAITING, Outcome, Priority

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
                job = Job(engine, self._request, self._priority, self._deadline)
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
        wake = max(retry_at, trio.current_time() + RECOVERY_POLL)
        return wake if wake < self._deadline else None

    def _moved(self, engine: Engine, exc: BaseException) -> None:
        self._fallbacks.append(engine.name)
        if self._meter is not None:
            self._meter.fallback(engine.name, exc)
        log.info("request moves on from %s (%s)", engine.name, type(exc).__name__)

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
