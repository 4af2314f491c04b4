"""``ChunkStream``: the caller's side of one streamed completion on an endpoint."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio

from .._breaker import BreakerPermit
from .._chunks import StreamChunk, Usage
from .._limits import Reservation
from .._providers._base import StreamAdapter
from ._sse_trio import SSEStream

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["ChunkStream", "close_resources"]

CLEANUP_TIMEOUT = 5.0  # longest the shielded close of a call's response and lease may take


async def close_resources(stack: AsyncExitStack) -> None:
    """Close a call's response, lease and reservation even while the caller is being
    cancelled, but never wait on a stuck connection for longer than ``CLEANUP_TIMEOUT``."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_TIMEOUT):
        await stack.aclose()


class ChunkStream(trio.abc.ReceiveChannel[StreamChunk]):
    """The chunks of one streamed completion: ``async for chunk in stream``.

    Obtained from ``async with endpoint.stream(request) as stream``. A
    :class:`trio.abc.ReceiveChannel` like :class:`~rakka_trio.Submission`: :meth:`receive`
    returns the next chunk and raises :class:`trio.EndOfChannel` after the last one;
    :meth:`aclose` closes the HTTP response (leaving the ``async with`` block does it too).
    ``usage`` and ``finish_reason`` are filled once the provider reported them; ``attempts``
    says how many tries it took to get the stream going.
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
        error: BaseException | None = None,
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
        self._failed = False  # an error ended the stream (raised once to the reader)
        self._settled = False  # the breaker got this call's one outcome
        self._closed = False
        # An error found while the first chunks were buffered (a policy stop after a usage
        # chunk, say): raised once the chunks before it were delivered.
        self._error = error
        self.attempts = attempts

    @property
    def usage(self) -> Usage | None:
        """The latest token usage reported (``None`` so far)."""
        return self._adapter.usage

    @property
    def finish_reason(self) -> str | None:
        """The normalised finish reason once the provider sent it."""
        return self._adapter.finish_reason

    async def receive(self) -> StreamChunk:
        """The next chunk. Raises :class:`trio.EndOfChannel` after the last one, the stream's
        error if it broke (once; then ``EndOfChannel``), and
        :class:`trio.ClosedResourceError` once closed."""
        chunk = await self._next_chunk()
        if chunk is None:
            raise trio.EndOfChannel
        return chunk

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> StreamChunk:
        chunk = await self._next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def _next_chunk(self) -> StreamChunk | None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        while self._next >= len(self._pending):
            if self._error is not None:
                error, self._error = self._error, None
                self._failed = True
                self._settle(error)
                raise error
            if self._eof or self._failed:
                self._settle(None)
                return None
            try:
                self._pending, self._eof = await self._endpoint._pull(self._events, self._adapter)
            except BaseException as exc:
                self._failed = True
                self._pending, self._next = [], 0
                self._settle(exc)
                raise
            self._next = 0
        chunk = self._pending[self._next]
        self._next += 1
        return chunk

    def _settle(self, exc: BaseException | None) -> None:
        if not self._settled:
            self._settled = True
            self._endpoint._breaker_finish(self._permit, exc)

    async def aclose(self) -> None:
        """Close the stream and its HTTP response; reading afterwards raises
        :class:`trio.ClosedResourceError`. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._reservation is not None:
            # The provider's reported usage corrects the estimate; without it (an error or an
            # early exit before the usage arrived) the estimate stands.
            self._reservation.settle(self._adapter.usage)
        if not self._settled:
            self._settled = True
            if self._error is not None:  # left before the (final) deferred error was raised
                self._endpoint._breaker_finish(self._permit, self._error)
            elif self._eof:  # the provider delivered everything; the caller just stopped reading
                self._endpoint._breaker_finish(self._permit, None)
            else:  # left early: never the endpoint's fault, and the probe permit comes back
                self._endpoint._breaker_release(self._permit)
        await close_resources(self._stack)
