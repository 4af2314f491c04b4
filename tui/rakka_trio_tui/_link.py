"""The Trio side of the TUI: keep a control-plane connection up and carry commands over it.

:class:`ControlLink` runs under Trio (in guest mode on Textual's loop, see :mod:`._guest`).
It connects through a *connector* (normally :func:`rakka_trio.open_control_client`; tests
inject a fake), feeds every server frame and connection event to ``emit`` (the App's
message queue), and reconnects with capped, jittered exponential backoff when the
connection is refused or lost. A refused token is final: retrying cannot fix it.

Commands (:meth:`ControlLink.submit`) run as their own tasks, so a slow answer never holds up
the frame stream, and each ends in exactly one :class:`~._model.CommandDone` callback.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias

import attrs
import trio

from rakka_trio._control import _protocol as proto
from rakka_trio._control._client import CloseInfo, ControlAuthError, ControlError

from ._model import (
    CommandDone,
    CommandRequest,
    Connected,
    Connecting,
    Disconnected,
    Input,
    SnapshotReceived,
)

__all__ = ["Backoff", "ClientLike", "Connector", "ControlLink", "build_command"]

Command: TypeAlias = proto.ForceOpen | proto.Reset | proto.Disable | proto.GetState

# A connection that stayed up this long was healthy: the next loss starts the backoff over.
_HEALTHY_AFTER = 10.0
# The server sends stats every ``stats_interval``: this many missed in a row (and at least
# _SILENT_MINIMUM seconds of silence) means the connection is dead without having said so
# (a peer that vanished leaves TCP open), so drop it and reconnect.
_SILENT_INTERVALS = 5
_SILENT_MINIMUM = 15.0


class ClientLike(Protocol):
    """What the link needs from a connected control client (:class:`rakka_trio.ControlClient`
    has all of it)."""

    @property
    def welcome(self) -> proto.WelcomeFrame:
        """The server's welcome frame (role, first snapshot)."""
        ...

    @property
    def closed(self) -> CloseInfo | None:
        """``None`` while connected; afterwards, why the connection ended."""
        ...

    def next_id(self) -> int:
        """A fresh command id."""
        ...

    async def send_command(self, command: Command) -> proto.AckFrame:
        """Send ``command`` and wait for its ack (raises a ControlError on refusal)."""
        ...

    async def receive(self) -> proto.ServerFrame | proto.UnknownFrame:
        """The next frame; :class:`trio.EndOfChannel` after the connection closed."""
        ...


Connector: TypeAlias = Callable[[], AbstractAsyncContextManager[ClientLike]]
"""Opens one connection (hello/welcome done) for the duration of an ``async with``."""


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before retry number ``n`` (1-based): ``initial * multiplier**(n-1)``, capped at
    ``maximum``, with equal jitter (half fixed, half random) so that every TUI watching a
    restarted server does not come back in the same instant."""

    initial: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    maximum: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry``."""
        # Cap the exponent before computing: a long outage must not overflow the float.
        exponent = min(max(retry - 1, 0), 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base / 2 + rng.uniform(0, base / 2)


def build_command(request: CommandRequest, command_id: int) -> Command:
    """The protocol frame for ``request`` (raises :class:`ValueError` for a value the
    protocol refuses, such as control characters in the reason)."""
    if request.kind == "force_open":
        return proto.ForceOpen(
            id=command_id,
            endpoint=request.endpoint,
            duration=request.duration,
            reason=request.reason,
            scope=request.scope,
        )
    if request.kind == "disable":
        return proto.Disable(
            id=command_id,
            endpoint=request.endpoint,
            duration=request.duration,
            reason=request.reason,
            scope=request.scope,
        )
    if request.kind == "reset":
        return proto.Reset(
            id=command_id, endpoint=request.endpoint, reason=request.reason, scope=request.scope
        )
    raise ValueError(f"unknown command kind {request.kind!r}")


class ControlLink:
    """Keeps one control connection alive and runs commands on it (Trio side).

    ``emit`` receives every :data:`~._model.Input` for the reducer, in order; it is called
    from Trio code on the host loop's thread and must not block. ``scrub`` is applied to
    every error text before it is emitted (the App passes one that hides the token and any
    credentials in the URL).
    """

    def __init__(
        self,
        connect: Connector,
        emit: Callable[[Input], None],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._connect = connect
        self._emit = emit
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._scrub = scrub
        self._nursery: trio.Nursery | None = None
        self._client: ClientLike | None = None
        self._refreshing = False
        self._attempt_scope: trio.CancelScope | None = None

    @property
    def connected(self) -> bool:
        """True while a greeted connection is up."""
        return self._client is not None

    async def run(self) -> None:
        """Connect, relay, reconnect; returns only when the server refused the token (or a
        bad configuration makes connecting pointless). Cancel it to stop."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._connection_loop()
            finally:
                self._nursery = None
            # Gave up: commands still waiting cannot be answered any more.
            nursery.cancel_scope.cancel()

    def submit(self, request: CommandRequest, done: Callable[[CommandDone], None]) -> None:
        """Send ``request`` on the current connection and call ``done`` with the outcome.

        Must be called inside the Trio run (the App goes through ``TrioGuest.call_soon``).
        """
        nursery = self._nursery
        if nursery is None:
            done(CommandDone(request=request, ok=False, error="not connected"))
            return
        nursery.start_soon(self._execute, request, done)

    def reconnect(self) -> None:
        """Drop the connection (or the wait before the next attempt) and connect again at
        once; the connector decides what to open (the console's node/fleet toggle)."""
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    async def _connection_loop(self) -> None:
        retry = 0
        while True:
            with trio.CancelScope() as scope:
                self._attempt_scope = scope
                next_retry = await self._attempt(retry)
            self._attempt_scope = None
            if scope.cancelled_caught:
                retry = 0  # reconnect() asked: a fresh start, no backoff
                continue
            if next_retry is None:
                return
            retry = next_retry

    async def _attempt(self, retry: int) -> int | None:
        """One connection, relayed until it ends, then the backoff; the next retry number,
        or ``None`` when retrying cannot help."""
        self._emit(Connecting(attempt=retry))
        started: float | None = None
        try:
            async with self._connect() as client:
                started = trio.current_time()
                self._client = client
                try:
                    self._emit(Connected(welcome=client.welcome))
                    silent = await self._relay(client)
                finally:
                    self._client = None
            closed = client.closed
            reason = silent or "connection lost: " + (closed.describe() if closed else "closed")
        except ControlAuthError as exc:
            self._emit(Disconnected(reason=self._scrub(str(exc)), retry_in=None, attempt=retry))
            return None
        except ControlError as exc:
            reason = self._scrub(str(exc))
        except ValueError as exc:
            # A value the protocol refuses before anything is sent (the client name):
            # the same every time, so retrying would only spin.
            self._emit(Disconnected(reason=self._scrub(str(exc)), retry_in=None, attempt=retry))
            return None
        if started is not None and trio.current_time() - started >= _HEALTHY_AFTER:
            retry = 0
        retry += 1
        delay = self._backoff.delay(retry, self._rng)
        if not math.isfinite(delay) or delay < 0:
            delay = self._backoff.maximum
        self._emit(Disconnected(reason=reason, retry_in=delay, attempt=retry))
        await trio.sleep(delay)
        return retry

    async def _relay(self, client: ClientLike) -> str | None:
        """Forward frames until the connection ends (``None``) or falls silent for longer
        than the server's stats rhythm allows (the reason, as text)."""
        interval = client.welcome.stats_interval
        limit = max(_SILENT_MINIMUM, _SILENT_INTERVALS * interval) if interval > 0 else math.inf
        while True:
            frame: proto.ServerFrame | proto.UnknownFrame | None = None
            with trio.move_on_after(limit):
                try:
                    frame = await client.receive()
                except trio.EndOfChannel:
                    return None
            if frame is None:
                return (
                    f"no frame from the server for {limit:g}s (stats are due every {interval:g}s)"
                )
            self._emit(frame)
            if isinstance(frame, proto.LaggedFrame | proto.EndpointAddedFrame):
                # Transitions were missed, or a new endpoint has no row yet: ask for the
                # whole state now rather than wait for the next stats frame.
                self._start_refresh(client)

    def _start_refresh(self, client: ClientLike) -> None:
        if self._refreshing or self._nursery is None:
            return  # one refresh in flight covers every reason to ask
        self._refreshing = True
        self._nursery.start_soon(self._refresh, client)

    async def _refresh(self, client: ClientLike) -> None:
        try:
            ack = await client.send_command(proto.GetState(id=client.next_id()))
        except ControlError:
            # Lost connection or a refusal (rate limited): the next stats frame or the next
            # connection's welcome brings the state anyway.
            return
        finally:
            self._refreshing = False
        if ack.snapshot is not None and self._client is client:
            self._emit(SnapshotReceived(snapshot=ack.snapshot))

    async def _execute(self, request: CommandRequest, done: Callable[[CommandDone], None]) -> None:
        client = self._client
        if client is None:
            done(CommandDone(request=request, ok=False, error="not connected"))
            return
        try:
            ack = await client.send_command(build_command(request, client.next_id()))
        except (ControlError, ValueError) as exc:
            done(CommandDone(request=request, ok=False, error=self._scrub(str(exc))))
            return
        done(
            CommandDone(
                request=request,
                ok=True,
                state=ack.state,
                nodes_acked=tuple(ack.nodes_acked or ()),
                nodes_missing=tuple(ack.nodes_missing or ()),
            )
        )
