"""Sessions: the HTTP client and credential of one endpoint, rotated hot.

A session owns an ``httpx.AsyncClient`` per *generation*. :meth:`Session.rotate` resolves the
credential again and builds a new client; calls already in flight finish on the old one,
which is closed once the last of them is done (drained). New calls use the new generation at
once. Rotations are serialised, and a rotation asked for by a call that saw a 401 on an old
generation is skipped when a newer one already exists (one rebuild per credential failure).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from .._config import EndpointConfig
from .._credentials import Secret
from .._errors import DeadlineExceeded, NetworkError, RakkaError, Timeout
from .._providers import get_provider

__all__ = ["Session", "SessionStatistics", "auth_headers", "transport_error"]

log = logging.getLogger("rakka_trio.session")

_CLOSE_TIMEOUT = 5.0  # seconds allowed for closing a drained client's pooled connections


def auth_headers(
    provider: str, secret: Secret | None, options: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The authentication (and protocol version) headers the provider registered as
    ``provider`` sends with ``secret`` (``options``: the endpoint's ``provider_options``)."""
    return get_provider(provider).auth_headers(secret, options=options or {})


def transport_error(
    exc: httpx.TransportError, *, phase: str, provider: str, endpoint: str
) -> RakkaError:
    """Map an httpx transport failure during ``phase`` ("send" or "body") to a typed error."""
    where: dict[str, Any] = {"provider": provider, "endpoint": endpoint}
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return Timeout(f"connect timed out ({name})", phase="connect", **where)
    if isinstance(exc, httpx.PoolTimeout):
        # Our own connection pool is exhausted: a local limit, not the provider's doing.
        text = "no pooled connection became free in time"
        return DeadlineExceeded(text, phase="pool", endpoint=endpoint, retryable=True)
    if isinstance(exc, httpx.WriteTimeout):
        return Timeout("sending the request timed out", phase="write", **where)
    if isinstance(exc, httpx.ReadTimeout):
        read_phase = "first_byte" if phase == "send" else "read_gap"
        return Timeout(f"read timed out ({name})", phase=read_phase, **where)
    if isinstance(exc, httpx.ConnectError):
        return NetworkError(f"cannot connect: {exc}", **where)
    return NetworkError(f"{name}: {exc}", **where)


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """Snapshot of a session: current generation, calls in flight, retired clients still
    draining, rotations so far and the credential's fingerprint (never its value)."""

    generation: int
    in_flight: int
    draining: int
    rotations: int
    credential_fingerprint: str | None


class _Generation:
    """One client and the credential it was built with."""

    __slots__ = ("client", "closed", "fingerprint", "in_flight", "number", "retired")

    def __init__(self, number: int, client: httpx.AsyncClient, fingerprint: str | None) -> None:
        self.number = number
        self.client = client
        self.fingerprint = fingerprint
        self.in_flight = 0
        self.retired = False
        self.closed = False


class Session:
    """The HTTP side of one endpoint. Created and owned by the supervisor; see the module doc.

    ``transport`` (an ``httpx.AsyncBaseTransport``) is for tests and custom networking;
    ``on_credential`` is told (synchronously) about each newly resolved credential.
    """

    def __init__(
        self,
        config: EndpointConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_credential: Callable[[Secret], None] | None = None,
    ) -> None:
        self._config = config
        self._transport = transport
        self._on_credential = on_credential
        self._current: _Generation | None = None
        self._draining: set[_Generation] = set()
        self._lock = trio.Lock()
        self._rotations = 0
        self._closed = False

    @property
    def config(self) -> EndpointConfig:
        """The endpoint's configuration."""
        return self._config

    @property
    def generation(self) -> int:
        """The current generation number (0 before the first client is built)."""
        return self._current.number if self._current is not None else 0

    async def _build(self, number: int) -> _Generation:
        cfg = self._config
        secret = await cfg.credential.resolve() if cfg.credential is not None else None
        if secret is not None and self._on_credential is not None:
            self._on_credential(secret)  # e.g. the limiter keys its budget by this credential
        t = cfg.timeouts
        client = httpx.AsyncClient(
            base_url=cfg.base_url,
            headers={
                **cfg.headers,
                **auth_headers(cfg.provider, secret, cfg.provider_options),
            },
            timeout=httpx.Timeout(
                connect=t.connect, read=t.read_gap, write=t.read_gap, pool=t.pool
            ),
            http2=cfg.http2,
            transport=self._transport,
            follow_redirects=False,
        )
        return _Generation(number, client, secret.fingerprint if secret is not None else None)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
        """Borrow the current client for one call: ``(client, generation)``.

        The generation stays open until every lease on it has ended, even if a rotation
        happens meanwhile.
        """
        if self._closed:
            raise RuntimeError(f"session for {self._config.name!r} is closed")
        if self._current is None:
            async with self._lock:
                if self._current is None:
                    self._current = await self._build(1)
        gen = self._current
        gen.in_flight += 1
        try:
            yield gen.client, gen.number
        finally:
            gen.in_flight -= 1
            if gen.retired and gen.in_flight == 0:
                await self._close(gen)

    async def rotate(self, *, seen_generation: int | None = None, reason: str = "rotate") -> bool:
        """Resolve the credential again and switch new calls to a fresh client.

        With ``seen_generation`` (the generation a call failed on), nothing happens when a
        newer generation already exists. Returns True when a new generation was built.
        """
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"session for {self._config.name!r} is closed")
            current = self._current
            if (
                seen_generation is not None
                and current is not None
                and current.number != seen_generation
            ):
                return False  # another call already rebuilt the client after this failure
            number = (current.number if current is not None else 0) + 1
            fresh = await self._build(number)
            self._current = fresh
            self._rotations += 1
            log.info("endpoint %s: session generation %d (%s)", self._config.name, number, reason)
            if current is not None:
                current.retired = True
                if current.in_flight == 0:
                    await self._close(current)
                else:
                    self._draining.add(current)
            return True

    async def _close(self, gen: _Generation) -> None:
        if gen.closed:
            return
        gen.closed = True
        self._draining.discard(gen)
        # Cleanup must finish even when the caller is being cancelled, but never hang.
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            await gen.client.aclose()

    async def aclose(self) -> None:
        """Close every client now (in-flight calls on them fail)."""
        self._closed = True
        gens = list(self._draining)
        if self._current is not None:
            gens.append(self._current)
        for gen in gens:
            await self._close(gen)

    def statistics(self) -> SessionStatistics:
        """A snapshot of the session."""
        current = self._current
        return SessionStatistics(
            generation=current.number if current is not None else 0,
            in_flight=sum(g.in_flight for g in self._draining)
            + (current.in_flight if current is not None else 0),
            draining=len(self._draining),
            rotations=self._rotations,
            credential_fingerprint=current.fingerprint if current is not None else None,
        )
