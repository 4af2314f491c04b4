"""Calling a provider through one endpoint: breaker → session → HTTP → SSE → adapter → retry.

``Endpoint.stream(request)`` retries (per the endpoint's :class:`RetryPolicy`) only until the
first chunk with content is ready; from the moment a chunk is handed to the caller, an error
ends the stream instead (no duplicated output). ``Endpoint.complete(request)`` collects the
whole stream before returning, so it may retry a stream that failed midway. Every call ends
with exactly one outcome on the breaker: success, a counted failure, or nothing (cancellation,
an early exit by the caller, or a non-counting error such as a 429), which also returns a
half-open probe permit. A 401 rotates the session's credential once and retries at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import httpx
import trio

from .._accounting import CallRecord, EndpointMeter
from .._breaker import BreakerHandle, BreakerPermit
from .._chunks import StreamChunk, Usage
from .._config import EndpointConfig
from .._engine import Engine, Priority, Submission
from .._errors import (
    ConfigError,
    DeadlineExceeded,
    RakkaError,
    RateLimited,
    StreamError,
    Timeout,
    Unauthorized,
    classify_http_status,
)
from .._limits import Cost, LimiterHandle, Reservation
from .._providers import stream_adapter_for
from .._providers._base import StreamAdapter
from .._request import ChatRequest, Completion, build_http_request
from .._retry import Retrier
from ._session import Session, transport_error
from ._sse_trio import SSEStream, aiter_sse

__all__ = ["ChunkStream", "Endpoint"]

log = logging.getLogger("rakka_trio.endpoint")

T = TypeVar("T")

_MAX_ERROR_BODY = 64 * 1024  # bytes of an error response read for classification


_DEFAULT_OUTPUT_ESTIMATE = 1024  # output tokens reserved when a request sets no max_tokens


def _estimate(request: ChatRequest) -> Cost:
    """A conservative admission cost: ~4 characters per prompt token, ``max_tokens`` out.

    The reservation is settled with the provider's reported usage afterwards, so the estimate
    only has to be in the right range.
    """
    chars = sum(len(str(m.get("content", ""))) for m in request.messages)
    return Cost(
        requests=1,
        input_tokens=max(1, chars // 4),
        output_tokens=request.max_tokens or _DEFAULT_OUTPUT_ESTIMATE,
    )


def _has_content(chunk: StreamChunk) -> bool:
    return bool(
        chunk.text
        or chunk.thinking
        or chunk.refusal
        or chunk.tool_calls
        or chunk.citations
        or chunk.finish_reason
    )


def _end_call(call: CallRecord, exc: BaseException | None, stream: ChunkStream | None) -> None:
    """Report a stream call's end to the metrics (an early exit by the caller is not "ok")."""
    if stream is None:
        call.end(exc)
    else:
        call.end(exc, stream.usage, stream.finish_reason, complete=stream._eof)


class ChunkStream:
    """The chunks of one streamed completion: ``async for chunk in stream``.

    Obtained from ``async with endpoint.stream(request) as stream``. ``usage`` and
    ``finish_reason`` are filled once the provider reported them; ``attempts`` says how many
    tries it took to get the stream going.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        permit: BreakerPermit,
        stack: AsyncExitStack,
        events: SSEStream,
        adapter: StreamAdapter,
        pending: list[StreamChunk],
        eof: bool,
        attempts: int,
        reservation: Reservation | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._reservation = reservation
        self._permit = permit
        self._stack = stack
        self._events = events
        self._adapter = adapter
        self._pending = pending
        self._next = 0
        self._eof = eof  # the provider's stream was read to its (verified) end
        self._settled = False  # the breaker got this call's one outcome
        self.attempts = attempts

    @property
    def usage(self) -> Usage | None:
        """The latest token usage reported (``None`` so far)."""
        return self._adapter.usage

    @property
    def finish_reason(self) -> str | None:
        """The normalised finish reason once the provider sent it."""
        return self._adapter.finish_reason

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> StreamChunk:
        while self._next >= len(self._pending):
            if self._eof:
                self._settle(None)
                raise StopAsyncIteration
            try:
                self._pending, self._eof = await self._endpoint._pull(self._events, self._adapter)
            except BaseException as exc:
                self._settle(exc)
                raise
            self._next = 0
        chunk = self._pending[self._next]
        self._next += 1
        return chunk

    def _settle(self, exc: BaseException | None) -> None:
        if not self._settled:
            self._settled = True
            breaker = self._endpoint.breaker
            if exc is None:
                breaker.record_success(self._permit)
            else:
                breaker.record_failure(self._permit, exc)

    async def _aclose(self) -> None:
        if self._reservation is not None:
            # The provider's reported usage corrects the estimate; without it (an error or an
            # early exit before the usage arrived) the estimate stands.
            self._reservation.settle(self._adapter.usage)
        if not self._settled:
            self._settled = True
            if self._eof:  # the provider delivered everything; the caller just stopped reading
                self._endpoint.breaker.record_success(self._permit)
            else:  # left early: never the endpoint's fault, and the probe permit comes back
                self._endpoint.breaker.release(self._permit)
        with trio.CancelScope(shield=True):
            await self._stack.aclose()


class Endpoint:
    """One provider endpoint under the supervisor: its config, breaker and HTTP session.

    ``stream(request)`` and ``complete(request)`` are the request API; ``breaker`` is the
    shared synchronous :class:`BreakerHandle`; ``session`` owns the HTTP client and the
    credential (``await endpoint.rotate_credentials()`` rebuilds it hot).
    """

    def __init__(
        self,
        config: EndpointConfig,
        breaker: BreakerHandle,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retrier: Retrier | None = None,
        limiter: LimiterHandle | None = None,
        meter: EndpointMeter | None = None,
    ) -> None:
        self._config = config
        self._breaker = breaker
        self._limiter = limiter
        self._meter = meter  # metrics and budget of every call (see docs/engine.md)
        self._engine: Engine | None = None  # the queued path; attached by the supervisor
        self._session = Session(
            config,
            transport=transport,
            on_credential=limiter.bind_credential if limiter is not None else None,
        )
        self._retrier = retrier if retrier is not None else Retrier(config.retry)

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self._config.name

    @property
    def config(self) -> EndpointConfig:
        """The endpoint's configuration."""
        return self._config

    @property
    def breaker(self) -> BreakerHandle:
        """The endpoint's circuit breaker handle."""
        return self._breaker

    @property
    def session(self) -> Session:
        """The endpoint's HTTP session."""
        return self._session

    @property
    def limiter(self) -> LimiterHandle | None:
        """The endpoint's rate limiter (``None`` for an endpoint built without one)."""
        return self._limiter

    @property
    def retrier(self) -> Retrier:
        """The retry policy in force, with this endpoint's retry budget."""
        return self._retrier

    async def rotate_credentials(self) -> None:
        """Resolve the credential again and move new calls to a fresh HTTP client; calls in
        flight finish on the old one."""
        await self._session.rotate(reason="requested")

    def attach_engine(self, engine: Engine) -> None:
        """Give this endpoint its queued path (:meth:`submit`); done by the supervisor."""
        self._engine = engine

    def __repr__(self) -> str:
        return f"<Endpoint {self.name!r} {self._config.provider} {self._breaker.state.value}>"

    # --- request API --------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[ChunkStream]:
        """Stream a completion: ``async with ep.stream(req) as chunks: async for c in chunks``.

        Raises :class:`CircuitOpen` at once when the breaker refuses, or the typed error of the
        last attempt when retries are exhausted. Errors after the first chunk was handed out
        are raised from the iteration and never retried.
        """
        total = self._config.timeouts.total
        deadline = trio.current_time() + total if total is not None else float("inf")
        # The metrics hook (also enforces a "reject" budget before anything is sent).
        call = self._meter.begin(request.model or self._config.model) if self._meter else None
        stream: ChunkStream | None = None
        try:
            with trio.move_on_at(deadline) as scope:
                stream = await self._with_retries(request, self._open)
                if call is not None:
                    call.first_chunk()
                try:
                    yield stream
                finally:
                    await stream._aclose()
            if scope.cancelled_caught:
                raise self._total_timeout()
        except BaseException as exc:
            if call is not None:
                _end_call(call, exc, stream)
            raise
        if call is not None:
            _end_call(call, None, stream)

    async def complete(self, request: ChatRequest) -> Completion:
        """The whole completion at once. A stream that fails midway may be retried, since no
        output reached the caller yet."""
        total = self._config.timeouts.total
        deadline = trio.current_time() + total if total is not None else float("inf")
        call = self._meter.begin(request.model or self._config.model) if self._meter else None
        try:
            with trio.move_on_at(deadline):
                done = await self._with_retries(
                    request, functools.partial(self._collect, call=call)
                )
                if call is not None:
                    call.end(None, done.usage, done.finish_reason)
                return done
            raise self._total_timeout()
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise

    async def submit(
        self, request: ChatRequest, *, priority: Priority = Priority.NORMAL
    ) -> Submission:
        """Queue ``request`` on this endpoint's engine (see docs/engine.md) and return its
        :class:`Submission`: ``async with await ep.submit(req) as s: async for chunk in s``.

        Raises at once when the request is refused: :class:`Backpressure` (capacity, per
        ``engine.on_full``), :class:`CircuitOpen`, :class:`BudgetExceeded`,
        :class:`ContextLengthExceeded` (``context_window``). The caller's effective Trio
        deadline becomes the request's deadline, also while it waits in the queue.
        """
        if self._engine is None:
            raise RuntimeError(f"endpoint {self.name!r} has no engine (not under a supervisor)")
        return await self._engine.submit(request, priority=priority)

    # --- internals ----------------------------------------------------------------------

    def _total_timeout(self) -> DeadlineExceeded:
        total = self._config.timeouts.total
        return DeadlineExceeded(  # our own limit; a fresh attempt (or endpoint) has a new one
            f"call exceeded its total timeout of {total:g}s",
            phase="total",
            endpoint=self.name,
            retryable=True,
        )

    async def _with_retries(
        self, request: ChatRequest, attempt_fn: Callable[[ChatRequest, int], Awaitable[T]]
    ) -> T:
        retrier = self._retrier
        retrier.note_request()
        started = trio.current_time()
        attempt = 0
        previous = 0.0
        rotated = False
        while True:
            try:
                return await attempt_fn(request, attempt + 1)
            except RakkaError as exc:
                failure: RakkaError = exc
            if isinstance(failure, Unauthorized) and not rotated:
                # One credential rebuild and one immediate retry per call (see README "Concepts").
                rotated = True
                await self._session.rotate(
                    seen_generation=getattr(failure, "_generation", None), reason="401"
                )
                continue
            if not request.idempotent:
                raise failure
            decision = retrier.next_delay(
                failure, attempt=attempt, started_at=started, previous=previous
            )
            if not decision.retry:
                raise failure
            log.info(
                "endpoint %s: attempt %d failed (%s); retrying in %.3fs",
                self.name,
                attempt + 1,
                type(failure).__name__,
                decision.delay,
            )
            await trio.sleep(decision.delay)
            attempt += 1
            previous = decision.delay

    async def _collect(
        self, request: ChatRequest, attempts: int, call: CallRecord | None = None
    ) -> Completion:
        stream = await self._open(request, attempts)
        if call is not None:
            call.first_chunk()
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream._aclose()
        return Completion.from_chunks(chunks, endpoint=self.name, attempts=attempts)

    async def _open(self, request: ChatRequest, attempts: int) -> ChunkStream:
        """One attempt: admit, send, check the status, read until the first content chunk."""
        cfg = self._config
        model = request.model or cfg.model
        if not model:
            raise ConfigError(
                [("model", f"request has no model and endpoint {cfg.name!r} has no default")]
            )
        permit = self._breaker.check()
        stack = AsyncExitStack()
        reservation: Reservation | None = None
        try:
            if self._limiter is not None:
                # Exiting the stack releases the concurrency permit; an exit before the
                # request went out refunds the estimate (cancellation while waiting takes
                # nothing at all).
                reservation = await stack.enter_async_context(
                    await self._limiter.reserve(_estimate(request), model=model)
                )
            client, generation = await stack.enter_async_context(self._session.lease())
            call = build_http_request(cfg.provider, cfg.base_url, model, request)
            http_request = client.build_request(
                "POST",
                call.url,
                json=call.json,
                params=call.params or None,
                headers={"accept": "text/event-stream"},
            )
            response = await self._send(client, http_request)
            stack.push_async_callback(response.aclose)
            if reservation is not None:
                reservation.mark_sent()
                self._observe(response, model)
            if response.status_code >= 400:
                body = await self._read_error_body(response)
                error = classify_http_status(
                    response.status_code,
                    response.headers,
                    body,
                    provider=cfg.provider,
                    endpoint=cfg.name,
                )
                if isinstance(error, Unauthorized):
                    error._generation = generation  # type: ignore[attr-defined]
                if reservation is not None:
                    # An error response generated no tokens; the request itself counts.
                    reservation.settle(Cost(requests=1))
                    if isinstance(error, RateLimited) and self._limiter is not None:
                        self._limiter.observe_rate_limited(
                            error.retry_after, headers=response.headers, model=model
                        )
                raise error
            adapter = stream_adapter_for(cfg.provider, endpoint=cfg.name)
            events = await stack.enter_async_context(
                # The read gap is already enforced per socket read by the client's read
                # timeout (mapped to Timeout(phase="read_gap")); a second cancel scope per
                # event would only cost time on the hot path.
                aiter_sse(response, read_gap=None, provider=cfg.provider, endpoint=cfg.name)
            )
            pending: list[StreamChunk] = []
            eof = False
            # Buffer until there is something worth showing: until then a failure is retried.
            while not eof and not any(_has_content(c) for c in pending):
                more, eof = await self._pull(events, adapter)
                pending.extend(more)
            return ChunkStream(
                self, permit, stack, events, adapter, pending, eof, attempts, reservation
            )
        except BaseException as exc:
            self._breaker.record_failure(permit, exc)
            with trio.CancelScope(shield=True):
                await stack.aclose()
            raise

    def _observe(self, response: httpx.Response, model: str) -> None:
        """Feed the provider's rate-limit headers to the limiter (adaptive limits)."""
        if self._limiter is not None:
            self._limiter.observe_headers(response.headers, model=model)

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        cfg = self._config
        with trio.move_on_after(cfg.timeouts.first_byte):
            try:
                return await client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise transport_error(
                    exc, phase="send", provider=cfg.provider, endpoint=cfg.name
                ) from None
        raise Timeout(
            f"no response within {cfg.timeouts.first_byte:g}s",
            phase="first_byte",
            provider=cfg.provider,
            endpoint=cfg.name,
        )

    async def _read_error_body(self, response: httpx.Response) -> bytes:
        body = bytearray()
        try:
            async for part in response.aiter_bytes():
                body += part
                if len(body) >= _MAX_ERROR_BODY:
                    break
        except httpx.TransportError:
            pass  # the status says enough; a broken error body must not hide it
        return bytes(body[:_MAX_ERROR_BODY])

    async def _pull(
        self, events: SSEStream, adapter: StreamAdapter
    ) -> tuple[list[StreamChunk], bool]:
        """``(chunks of the next event, end reached)``; at the end the adapter verifies that
        the provider's terminal marker came (else :class:`StreamTruncated`)."""
        try:
            event = await events.__anext__()
        except StopAsyncIteration:
            return adapter.finish(), True
        except httpx.TransportError as exc:
            raise transport_error(
                exc, phase="body", provider=self._config.provider, endpoint=self.name
            ) from None
        try:
            return adapter.feed(event), False
        except RakkaError:
            raise
        except Exception as exc:  # an adapter bug must surface typed, not as a raw KeyError
            raise StreamError(
                f"cannot interpret {event.event!r} event: {type(exc).__name__}",
                provider=self._config.provider,
                endpoint=self.name,
            ) from exc
