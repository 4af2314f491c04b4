"""Trio adaptor: an async byte stream (or an ``httpx.Response``) in, server-sent events out.

The decoding itself is :class:`~rakka_trio._sse.SSEDecoder`; this module only pulls bytes,
applies the read-gap timeout and turns transport failures into the library's typed errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Any

import httpx
import trio

from .._errors import NetworkError, Timeout
from .._sse import SSEDecoder, SSEEvent

__all__ = ["SSEStream", "aiter_sse"]


class SSEStream:
    """Async iterator of :class:`SSEEvent` over a byte stream; see :func:`aiter_sse`.

    It is also an async context manager: leaving the block (or calling :meth:`aclose`) closes
    the underlying byte iterator, so an abandoned stream does not hold its connection open.
    """

    def __init__(
        self,
        source: AsyncIterable[bytes] | httpx.Response,
        *,
        decoder: SSEDecoder | None = None,
        read_gap: float | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        if read_gap is not None and not read_gap > 0:
            raise ValueError(f"read_gap must be positive or None, got {read_gap!r}")
        # aiter_bytes, not aiter_raw: content-encoding (gzip from a proxy) must be undone first.
        self._bytes: AsyncIterator[bytes] = (
            source.aiter_bytes() if isinstance(source, httpx.Response) else aiter(source)
        )
        self._decoder = decoder if decoder is not None else SSEDecoder()
        self._read_gap = read_gap
        self._provider = provider
        self._endpoint = endpoint
        self._pending: list[SSEEvent] = []
        self._next = 0  # index of the next event in _pending to hand out
        self._eof = False

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> SSEEvent:
        while self._next >= len(self._pending):
            if self._eof:
                raise StopAsyncIteration
            chunk = await self._read()
            self._next = 0
            if chunk is None:
                self._eof = True
                self._pending = self._decoder.close()
                await self.aclose()
            else:
                self._pending = self._decoder.feed(chunk)
        event = self._pending[self._next]
        self._next += 1
        return event

    async def _read(self) -> bytes | None:
        """The next bytes from the source, ``None`` at its end."""
        try:
            if self._read_gap is None:
                return await self._bytes.__anext__()
            # The gap is measured per read, only while waiting for bytes: time the consumer
            # spends between events does not count against the server.
            with trio.move_on_after(self._read_gap):
                return await self._bytes.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.TimeoutException as exc:
            raise Timeout(f"read timed out: {exc}", phase="read_gap", **self._where()) from exc
        except httpx.TransportError as exc:
            raise NetworkError(
                f"stream broken: {type(exc).__name__}: {exc}", **self._where()
            ) from exc
        # Only our own move_on_after gets here; an outer cancellation propagates as Cancelled.
        raise Timeout(f"no bytes for {self._read_gap:g} s", phase="read_gap", **self._where())

    def _where(self) -> dict[str, Any]:
        return {"provider": self._provider, "endpoint": self._endpoint}

    async def aclose(self) -> None:
        """Close the underlying byte iterator (idempotent)."""
        self._eof = True
        aclose = getattr(self._bytes, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> SSEStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def aiter_sse(
    source: AsyncIterable[bytes] | httpx.Response,
    *,
    decoder: SSEDecoder | None = None,
    read_gap: float | None = None,
    provider: str | None = None,
    endpoint: str | None = None,
) -> SSEStream:
    """Iterate the server-sent events of ``source`` (async bytes, or a streaming httpx response).

    ``read_gap`` is the longest wait, in seconds, for the next bytes; exceeding it raises
    :class:`~rakka_trio.Timeout` with ``phase="read_gap"``. Transport failures become
    :class:`~rakka_trio.Timeout` / :class:`~rakka_trio.NetworkError`; ``provider`` and
    ``endpoint`` label those errors. Pass a configured ``decoder`` to change the event size
    limit or EOF leniency. Cancellation is never caught.

    Use it as ``async with aiter_sse(resp, read_gap=30) as events: async for ev in events:``
    so the byte stream is closed even when the loop is left early.
    """
    return SSEStream(
        source, decoder=decoder, read_gap=read_gap, provider=provider, endpoint=endpoint
    )
