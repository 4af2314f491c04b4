"""Calling a provider through one endpoint: limiter → breaker → session → HTTP → SSE →
adapter → retry.

``Endpoint.stream(request)`` retries (per the endpoint's :class:`RetryPolicy`) only until the
first chunk with content is ready; from the moment a chunk is handed to the caller, an error
ends the stream instead (no duplicated output). ``Endpoint.complete(request)`` collects the
whole stream before returning, so it may retry a stream that failed midway.

Each *attempt* ends with exactly one outcome on the breaker: success, a counted failure, or
nothing (cancellation, an early exit by the caller, or a non-counting error such as a 429),
which also returns a half-open probe permit. A call retried twice after 503s therefore adds
three failures. An attempt waits for the rate limiter first and takes its breaker permit (a
half-open probe) only once nothing is left to wait for, so a waiting call never holds the
only probe. Once a failure has opened the breaker, the call stops retrying and raises
:class:`CircuitOpen` with that failure as its ``__cause__``. A 401 rotates the session's
credential once and retries at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import httpx
import trio

from .._accounting import CallRecord, EndpointMeter
from .._breaker import BreakerHandle, BreakerPermit
from .._chunks import StreamChunk
from .._config import EndpointConfig
from .._engine import Engine, Priority, SubmitCall, circuit_refusal
from .._errors import (
    CircuitOpen,
    ConfigError,
    ContentFiltered,
    DeadlineExceeded,
    RakkaError,
    RateLimited,
    RateLimitExceeded,
    StreamError,
    Timeout,
    Unauthorized,
)
from .._limits import Cost, LimiterHandle, Reservation
from .._providers import StreamAdapter, get_provider
from .._request import ChatRequest, Completion
from .._retry import Retrier
from ._session import Session, transport_error
from ._sse_trio import SSEStream, aiter_sse
from ._stream import ChunkStream, close_resources

__all__ = ["ChunkStream", "Endpoint"]

log = logging.getLogger("rakka_trio.endpoint")

T = TypeVar("T")

_MAX_ERROR_BODY = 64 * 1024  # bytes of an error response read for classification


_DEFAULT_OUTPUT_ESTIMATE = 1024  # output tokens reserved when a request sets no max_tokens

MoveOn = Callable[[RakkaError], bool]

_NO_SCOPE = contextlib.nullcontext()  # stands in for the total timeout's scope when unset


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
        or chunk.redacted_thinking
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

    def wait_estimate(self, request: ChatRequest) -> float:
        """Seconds the rate limiter would make ``request`` wait if it were sent now (0.0: at
        once; ``math.inf``: not until a concurrency permit is back, or never). Takes
        nothing; a deployment uses it to skip an endpoint that cannot serve right now."""
        limiter = self._limiter
        if limiter is None:
            return 0.0
        return limiter.wait_estimate(_estimate(request), model=request.model or self._config.model)

    def headroom(self) -> float:
        """Rate-limit capacity left, 0..1: one minus the busiest limit's utilisation (1.0
        without limits). The ``headroom`` routing strategy prefers the most."""
        if self._limiter is None:
            return 1.0
        return 1.0 - self._limiter.statistics().utilisation

    # --- request API --------------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self, request: ChatRequest, *, move_on: MoveOn | None = None
    ) -> AsyncIterator[ChunkStream]:
        """Stream a completion: ``async with ep.stream(req) as chunks: async for c in chunks``.

        Raises :class:`CircuitOpen` at once when the breaker refuses, or the typed error of the
        last attempt when retries are exhausted. Errors after the first chunk was handed out
        are raised from the iteration and never retried.

        ``move_on`` (used by deployments) is asked before each retry of a failure on this
        endpoint and before waiting for the rate limiter: when it returns True the error is
        raised at once, so the request can go to another endpoint instead.
        """
        total = self._config.timeouts.total
        # The metrics hook (also enforces a "reject" budget before anything is sent).
        call = self._meter.begin(request.model or self._config.model) if self._meter else None
        stream: ChunkStream | None = None
        attempt: Callable[[ChatRequest, int], Awaitable[ChunkStream]] = self._open
        if move_on is not None:
            attempt = functools.partial(self._open, move_on=move_on)
        try:
            # A cancel scope costs about as much as parsing a chunk: none without a total.
            deadline = trio.current_time() + total if total is not None else None
            with trio.move_on_at(deadline) if deadline is not None else _NO_SCOPE as scope:
                stream = await self._with_retries(request, attempt, call, move_on)
                if call is not None:
                    call.first_chunk()
                try:
                    yield stream
                finally:
                    await stream.aclose()
            if scope is not None and scope.cancelled_caught:
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
        deadline = trio.current_time() + total if total is not None else None
        call = self._meter.begin(request.model or self._config.model) if self._meter else None
        try:
            with trio.move_on_at(deadline) if deadline is not None else _NO_SCOPE:
                done = await self._with_retries(
                    request, functools.partial(self._collect, call=call), call
                )
                if call is not None:
                    call.end(None, done.usage, done.finish_reason)
                return done
            raise self._total_timeout()
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise

    def submit(self, request: ChatRequest, *, priority: Priority = Priority.NORMAL) -> SubmitCall:
        """Queue ``request`` on this endpoint's engine (see docs/engine.md):
        ``async with ep.submit(req) as sub: async for chunk in sub`` admits it on entry and
        closes the :class:`Submission` on exit; ``sub = await ep.submit(req)`` returns it.

        Admission raises at once when the request is refused: :class:`Backpressure`
        (capacity, per ``engine.on_full``), :class:`CircuitOpen`, :class:`BudgetExceeded`,
        :class:`ContextLengthExceeded` (``context_window``). The caller's effective Trio
        deadline at admission becomes the request's deadline, also while it waits in the queue.
        """
        if self._engine is None:
            raise RuntimeError(f"endpoint {self.name!r} has no engine (not under a supervisor)")
        return self._engine.submit(request, priority=priority)

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
        self,
        request: ChatRequest,
        attempt_fn: Callable[[ChatRequest, int], Awaitable[T]],
        call: CallRecord | None = None,
        move_on: MoveOn | None = None,
    ) -> T:
        retrier = self._retrier
        retrier.note_request()
        started = trio.current_time()
        attempt = 0
        previous = 0.0
        rotated = False
        last: RakkaError | None = None  # the previous attempt's failure
        while True:
            if call is not None:
                call.attempt_started()
            try:
                return await attempt_fn(request, attempt + 1)
            except RakkaError as exc:
                failure: RakkaError = exc
            if call is not None:
                call.attempt_failed(failure)
            if isinstance(failure, CircuitOpen) and last is not None:
                raise failure from last  # an earlier attempt's failure opened the breaker
            if isinstance(failure, Unauthorized) and not rotated:
                # One credential rebuild and one immediate retry per call (see README "Concepts").
                rotated = True
                await self._session.rotate(
                    seen_generation=getattr(failure, "_generation", None), reason="401"
                )
                if call is not None:
                    call.retried()
                last = failure
                continue
            if not request.idempotent:
                raise failure
            if move_on is not None and move_on(failure):
                raise failure  # another endpoint can serve it now: no retry here
            decision = retrier.next_delay(
                failure, attempt=attempt, started_at=started, previous=previous
            )
            if not decision.retry:
                raise failure
            refused = circuit_refusal(self._breaker)
            if refused is not None:
                raise refused from failure  # the failures opened the breaker: no retry can pass
            log.info(
                "endpoint %s: attempt %d failed (%s); retrying in %.3fs",
                self.name,
                attempt + 1,
                type(failure).__name__,
                decision.delay,
            )
            if call is not None:
                call.retried()
            await trio.sleep(decision.delay)
            attempt += 1
            previous = decision.delay
            last = failure

    async def _collect(
        self, request: ChatRequest, attempts: int, call: CallRecord | None = None
    ) -> Completion:
        stream = await self._open(request, attempts)
        if call is not None:
            call.first_chunk()
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        return Completion.from_chunks(chunks, endpoint=self.name, attempts=attempts)

    async def _open(
        self, request: ChatRequest, attempts: int, move_on: MoveOn | None = None
    ) -> ChunkStream:
        """One attempt: admit, send, check the status, read until the first content chunk."""
        cfg = self._config
        model = request.model or cfg.model
        if not model:
            raise ConfigError(
                [("model", f"request has no model and endpoint {cfg.name!r} has no default")]
            )
        refused = circuit_refusal(self._breaker)
        if refused is not None:
            raise refused  # fail fast, before waiting for anything
        permit: BreakerPermit | None = None
        stack = AsyncExitStack()
        reservation: Reservation | None = None
        try:
            if self._limiter is not None:
                # Exiting the stack releases the concurrency permit; a failure before the
                # request goes out refunds the estimate (see below; cancellation while
                # waiting takes nothing at all).
                reservation = await stack.enter_async_context(
                    await self._reserve(request, model, move_on)
                )
            # The breaker permit (in HALF_OPEN: a probe) only once nothing is left to wait for.
            permit = self._breaker_admit()
            client, generation = await stack.enter_async_context(self._session.lease())
            provider = get_provider(cfg.provider)
            call = provider.build_request(
                request, base_url=cfg.base_url, model=model, options=cfg.provider_options
            )
            http_request = client.build_request(
                "POST",
                call.url,
                json=call.json,
                params=call.params or None,
                headers={"accept": "text/event-stream", **call.headers},
            )
            if reservation is not None:
                # From here the provider may see the request (even if sending fails): the
                # estimate stands.
                reservation.mark_sent()
            response = await self._send(client, http_request)
            stack.push_async_callback(response.aclose)
            if reservation is not None:
                self._observe(response, model)
            if response.status_code >= 400:
                body = await self._read_error_body(response)
                error = provider.classify_http_error(
                    response.status_code, response.headers, body, endpoint=cfg.name
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
            adapter = provider.stream_adapter(endpoint=cfg.name)
            events = await stack.enter_async_context(
                # The read gap is already enforced per socket read by the client's read
                # timeout (mapped to Timeout(phase="read_gap")); a second cancel scope per
                # event would only cost time on the hot path.
                aiter_sse(response, read_gap=None, provider=cfg.provider, endpoint=cfg.name)
            )
            pending: list[StreamChunk] = []
            eof = False
            deferred: ContentFiltered | None = None
            # Buffer until there is something worth showing: until then a failure is retried.
            try:
                while not eof and not any(_has_content(c) for c in pending):
                    more, eof = await self._pull(events, adapter)
                    pending.extend(more)
            except ContentFiltered as exc:
                if not pending:
                    raise
                # A policy stop is final (never retried): deliver what came before it (the
                # usage of a blocked prompt), then raise it.
                deferred, eof = exc, True
            return ChunkStream(
                self, permit, stack, events, adapter, pending, eof, attempts, reservation, deferred
            )
        except BaseException as exc:
            if permit is not None:
                self._breaker_finish(permit, exc)
            if reservation is not None and not reservation.sent:
                reservation.refund()  # never sent (cancelled, breaker opened ...): all back
            await close_resources(stack)
            raise

    async def _reserve(
        self, request: ChatRequest, model: str, move_on: MoveOn | None
    ) -> Reservation:
        """Take the rate budget (and a concurrency permit) for one attempt. With ``move_on``
        (a deployment with other endpoints), a key that cannot admit at once raises instead
        of waiting when another endpoint can serve the request now."""
        assert self._limiter is not None
        cost = _estimate(request)
        if move_on is not None:
            try:
                return await self._limiter.reserve(cost, model=model, max_wait=0.0)
            except (RateLimitExceeded, RateLimited) as exc:
                if move_on(exc):
                    raise
        return await self._limiter.reserve(cost, model=model)

    # --- the breaker (every permit taken and returned here) -------------------------------

    def _breaker_admit(self) -> BreakerPermit:
        """Take the breaker's permit for one attempt (raises :class:`CircuitOpen`)."""
        return self._breaker.check()

    def _breaker_finish(self, permit: BreakerPermit, exc: BaseException | None) -> None:
        """Report the attempt's outcome (``exc`` None: success; the error decides if it
        counts)."""
        if exc is None:
            self._breaker.record_success(permit)
        else:
            self._breaker.record_failure(permit, exc)

    def _breaker_release(self, permit: BreakerPermit) -> None:
        """End the attempt without an outcome (the caller left early)."""
        self._breaker.release(permit)

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
        # Bounded as a whole: the status says enough, so a body (or a close) that never
        # finishes must not hold the call.
        with trio.move_on_after(self._config.timeouts.read_gap):
            try:
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) >= _MAX_ERROR_BODY:
                        break
            except httpx.TransportError:
                pass  # a broken error body must not hide the status
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
