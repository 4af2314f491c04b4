"""An async client of the control plane (protocol v1), used by the CLI and the TUI.

::

    async with rk.open_control_client("ws://127.0.0.1:8765", token=t, client_name="me") as c:
        print(c.role, c.snapshot)
        await c.force_open("openai-primary", duration=300, reason="incident-42")
        async for frame in c:                  # transitions, commands, stats, lagged, ...
            ...

A background task reads every frame: answers are routed to the :meth:`ControlClient.
send_command` call waiting for that ``id``; everything else goes to a bounded queue that
``async for`` drains. If the application stops iterating, the oldest frames are dropped and a
:class:`~rakka_trio._protocol.LaggedFrame` says how many — so waiting for an ack never
depends on anyone consuming the event stream.
"""

from __future__ import annotations

import itertools
import math
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Final

import attrs
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from .._credentials import Secret
from .._errors import RakkaError
from .._events import DropOldestQueue
from . import _protocol as proto
from ._transport import connect_failure

__all__ = [
    "CloseInfo",
    "ControlAuthError",
    "ControlClient",
    "ControlCommandError",
    "ControlConnectionError",
    "ControlError",
    "ControlUnknownEndpoint",
    "open_control_client",
]

_DEFAULT_BUFFER: Final = 1024
_MAX_FRAME: Final = 64 * 2**20  # stats of thousands of endpoints fit; a rogue server can't OOM us
_DISCONNECT_TIMEOUT: Final = 2.0
_CANCELLED_CLOSE_GRACE: Final = 0.1


class ControlError(RakkaError):
    """A control-plane client failure. ``code`` is the server's error code when there was
    one (see :class:`~rakka_trio._protocol.ErrorCode`)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ControlConnectionError(ControlError):
    """Could not connect (refused, unreachable, TLS, handshake), or the connection was lost."""


class ControlAuthError(ControlError):
    """The token was not accepted: ``unauthorized`` at hello, or ``forbidden`` for a command
    sent over a read-only (viewer) connection."""


class ControlCommandError(ControlError):
    """The server refused a command (``invalid``, ``rate_limited``, ...). ``id`` is the
    command's id."""

    def __init__(self, message: str, *, code: str | None = None, id: Any = None) -> None:
        super().__init__(message, code=code)
        self.id = id


class ControlUnknownEndpoint(ControlCommandError):
    """The command named an endpoint the server's supervisor does not have."""

    def __init__(self, message: str, *, endpoint: str, id: Any = None) -> None:
        super().__init__(message, code=proto.ErrorCode.UNKNOWN_ENDPOINT, id=id)
        self.endpoint = endpoint


@attrs.frozen
class CloseInfo:
    """Why the connection ended: the websocket close ``code`` and ``reason`` (or the local
    ``error`` that ended it)."""

    code: int | None
    reason: str | None
    error: str | None = None

    def describe(self) -> str:
        """A one-line human description."""
        if self.error:
            return self.error
        what = f"closed by the server (code {self.code}"
        return what + (f": {self.reason})" if self.reason else ")")


def _error_from_frame(frame: proto.ErrorFrame, endpoint: str | None = None) -> ControlError:
    message = f"{frame.code}: {frame.message}"
    if frame.code in (proto.ErrorCode.FORBIDDEN, proto.ErrorCode.UNAUTHORIZED):
        return ControlAuthError(frame.message, code=frame.code)
    if frame.code == proto.ErrorCode.UNKNOWN_ENDPOINT:
        return ControlUnknownEndpoint(frame.message, endpoint=endpoint or "", id=frame.id)
    if frame.code == proto.ErrorCode.TOO_MANY_CONNECTIONS:
        return ControlConnectionError(message, code=frame.code)
    return ControlCommandError(message, code=frame.code, id=frame.id)


Command = proto.ForceOpen | proto.Reset | proto.Disable | proto.GetState


class _Pending:
    """One command waiting for its answer."""

    __slots__ = ("done", "endpoint", "result")

    def __init__(self, endpoint: str | None) -> None:
        self.done = trio.Event()
        self.endpoint = endpoint
        self.result: proto.AckFrame | ControlError | None = None


class ControlClient:
    """A connected, greeted control-plane session (from :func:`open_control_client`).

    ``role`` is ``"operator"`` or ``"viewer"``; ``welcome`` the server's welcome frame and
    ``snapshot`` the state it sent. Iterate (``async for frame in client``) for server frames
    other than answers to this client's commands; iteration ends when the connection closes
    (see :attr:`closed`).
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        welcome: proto.WelcomeFrame,
        *,
        buffer: int,
        command_timeout: float,
    ) -> None:
        self._ws = ws
        self._welcome = welcome
        self._command_timeout = command_timeout
        # Frames the application has not read yet; it never blocks the reader task.
        self._frames: DropOldestQueue[proto.ServerFrame | proto.UnknownFrame] = DropOldestQueue(
            buffer, _lagged_frame
        )
        self._pending: dict[Any, _Pending] = {}
        self._ids = itertools.count(1)
        self._closed: CloseInfo | None = None

    # --- properties -----------------------------------------------------------------------

    @property
    def role(self) -> str:
        """``"operator"`` (may send commands) or ``"viewer"`` (read-only)."""
        return self._welcome.role

    @property
    def welcome(self) -> proto.WelcomeFrame:
        """The server's welcome frame."""
        return self._welcome

    @property
    def snapshot(self) -> proto.Snapshot:
        """The snapshot sent in the welcome."""
        return self._welcome.snapshot

    @property
    def scope(self) -> str:
        """``"node"``, or ``"fleet"``: every node's figures (``welcome.fleet``) and events."""
        return self._welcome.scope

    @property
    def closed(self) -> CloseInfo | None:
        """``None`` while connected; afterwards, why the connection ended."""
        return self._closed

    @property
    def dropped(self) -> int:
        """Frames this client dropped because the application did not iterate fast enough."""
        return self._frames.dropped

    @property
    def pending_commands(self) -> Mapping[Any, str | None]:
        """Ids of commands still waiting for an answer (id → endpoint)."""
        return MappingProxyType({k: v.endpoint for k, v in self._pending.items()})

    # --- commands -------------------------------------------------------------------------

    def next_id(self) -> int:
        """A fresh command id for this connection."""
        return next(self._ids)

    async def send_command(self, command: Command) -> proto.AckFrame:
        """Send ``command`` and wait for the answer with its id.

        Returns the ``ack``; raises :class:`ControlAuthError` (``forbidden``),
        :class:`ControlUnknownEndpoint`, :class:`ControlCommandError` for other refusals,
        and :class:`ControlConnectionError` if the connection ends first or no answer comes
        within the client's ``command_timeout``.
        """
        if self._closed is not None:
            raise ControlConnectionError(f"not connected: {self._closed.describe()}")
        if command.id in self._pending:
            raise ValueError(f"command id {command.id!r} is already waiting for an answer")
        endpoint = None if isinstance(command, proto.GetState) else command.endpoint
        pending = _Pending(endpoint)
        self._pending[command.id] = pending
        limit = self._command_timeout
        try:
            try:
                await self._ws.send_message(proto.encode(command))
            except ConnectionClosed as exc:
                raise ControlConnectionError(
                    f"connection lost while sending {command.TYPE}: {_describe_close(exc)}"
                ) from None
            with trio.move_on_after(limit):
                await pending.done.wait()
        finally:
            del self._pending[command.id]
        result = pending.result
        if result is None:
            raise ControlConnectionError(
                f"no answer to {command.TYPE} (id {command.id!r}) within {limit:g}s", code="timeout"
            )
        if isinstance(result, ControlError):
            raise result
        return result

    # scope="fleet": on every node; the ack lists nodes_acked and nodes_missing.
    async def force_open(
        self, endpoint: str, duration: float | None = None, reason: str | None = None, *,
        scope: str | None = None,
    ) -> proto.AckFrame:  # fmt: skip
        """Hold ``endpoint``'s breaker open for ``duration`` s (``None``: until reset)."""
        cmd = proto.ForceOpen(
            id=self.next_id(), endpoint=endpoint, duration=duration, reason=reason, scope=scope
        )
        return await self.send_command(cmd)

    async def reset(
        self, endpoint: str, reason: str | None = None, *, scope: str | None = None
    ) -> proto.AckFrame:
        """Force-close ``endpoint``'s breaker and clear any forced state."""
        return await self.send_command(
            proto.Reset(id=self.next_id(), endpoint=endpoint, reason=reason, scope=scope)
        )

    async def disable(
        self, endpoint: str, duration: float | None = None, reason: str | None = None, *,
        scope: str | None = None,
    ) -> proto.AckFrame:  # fmt: skip
        """Bypass ``endpoint``'s breaker for ``duration`` s (``None``: until reset)."""
        cmd = proto.Disable(
            id=self.next_id(), endpoint=endpoint, duration=duration, reason=reason, scope=scope
        )
        return await self.send_command(cmd)

    async def get_state(self) -> proto.Snapshot:
        """A fresh snapshot of every endpoint."""
        ack = await self.send_command(proto.GetState(id=self.next_id()))
        if ack.snapshot is None:
            raise ControlCommandError("the server's get_state answer carried no snapshot")
        return ack.snapshot

    async def get_fleet_state(self) -> proto.FleetSnapshot:
        """A fresh snapshot of the whole fleet (code ``no_fleet`` from a server without)."""
        ack = await self.send_command(proto.GetState(id=self.next_id(), scope=proto.FLEET))
        if ack.fleet is None:
            raise ControlCommandError("the server's fleet get_state answer carried no fleet")
        return ack.fleet

    # --- the frame stream -----------------------------------------------------------------

    def receive_nowait(self) -> proto.ServerFrame | proto.UnknownFrame:
        """The next frame (a :class:`~rakka_trio._protocol.LaggedFrame` first if frames were
        dropped). Raises :class:`trio.WouldBlock` if none is waiting and
        :class:`trio.EndOfChannel` once the connection closed and the queue is drained."""
        return self._frames.receive_nowait()

    async def receive(self) -> proto.ServerFrame | proto.UnknownFrame:
        """Wait for the next frame; :class:`trio.EndOfChannel` after the connection closed."""
        return await self._frames.receive()

    def __aiter__(self) -> ControlClient:
        return self

    async def __anext__(self) -> proto.ServerFrame | proto.UnknownFrame:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Close the connection (normally done by leaving ``open_control_client``)."""
        with trio.move_on_after(_DISCONNECT_TIMEOUT) as scope:
            scope.shield = True
            await self._ws.aclose()
        self._finish(CloseInfo(1000, None))

    # --- internals ------------------------------------------------------------------------

    def _route(self, frame: proto.ServerFrame | proto.UnknownFrame) -> None:
        if isinstance(frame, proto.AckFrame | proto.ErrorFrame) and frame.id in self._pending:
            pending = self._pending[frame.id]
            if pending.result is None:
                pending.result = (
                    frame
                    if isinstance(frame, proto.AckFrame)
                    else _error_from_frame(frame, pending.endpoint)
                )
                pending.done.set()
                return
        self._frames.push(frame)

    def _finish(self, info: CloseInfo) -> None:
        if self._closed is None:
            self._closed = info
        for pending in self._pending.values():
            if pending.result is None:
                pending.result = ControlConnectionError(
                    f"connection ended before the answer: {self._closed.describe()}"
                )
                pending.done.set()
        self._frames.close()

    async def _read_loop(self) -> None:
        """Route every incoming frame until the connection closes. Never raises an Exception
        (failures end the connection and are reported through :attr:`closed`), so the
        surrounding nursery only ever carries the application's own errors."""
        try:
            while True:
                message = await self._ws.get_message()
                self._route(proto.decode_server_frame(message))
        except ConnectionClosed as exc:
            reason = exc.reason
            self._finish(
                CloseInfo(reason.code if reason else None, reason.reason if reason else None)
            )
        except proto.ProtocolError as exc:
            self._finish(CloseInfo(None, None, f"protocol error from server: {exc}"))
            with trio.move_on_after(_DISCONNECT_TIMEOUT) as scope:
                scope.shield = True
                await self._ws.aclose(1002, "protocol error")


def _lagged_frame(dropped: int) -> proto.LaggedFrame:
    return proto.LaggedFrame(wall=round(time.time(), 3), dropped=dropped)


def _describe_close(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    return f"code {reason.code}" + (f" ({reason.reason})" if reason.reason else "")


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    non_cancel = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(non_cancel) == 1:
        return non_cancel[0]
    return leaves[0] if len(leaves) == 1 else None


async def _handshake(
    ws: trio_websocket.WebSocketConnection, url: str, hello: proto.Hello
) -> proto.WelcomeFrame:
    """Send hello, read the answer (the caller bounds the time)."""
    try:
        await ws.send_message(proto.encode(hello))
        message = await ws.get_message()
    except ConnectionClosed as exc:
        raise ControlConnectionError(
            f"{url}: closed during the handshake ({_describe_close(exc)})"
        ) from None
    try:
        frame = proto.decode_server_frame(message)
    except proto.ProtocolError as exc:
        raise ControlConnectionError(f"{url}: not a rakka-trio control server ({exc})") from None
    if isinstance(frame, proto.ErrorFrame):
        error = _error_from_frame(frame)
        if isinstance(error, ControlAuthError):
            raise ControlAuthError(f"{url}: token not accepted ({frame.message})", code=frame.code)
        raise ControlConnectionError(
            f"{url}: refused ({frame.code}: {frame.message})", code=frame.code
        )
    if not isinstance(frame, proto.WelcomeFrame):
        raise ControlConnectionError(f"{url}: expected a welcome frame, got {type(frame).__name__}")
    return frame


@asynccontextmanager
async def open_control_client(
    url: str,
    *,
    token: str | Secret | None = None,
    client_name: str = "rakka-trio-client",
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    buffer: int = _DEFAULT_BUFFER,
    require_operator: bool = False,
    scope: str | None = None,
) -> AsyncIterator[ControlClient]:
    """Connect to a control server, say hello and yield a :class:`ControlClient`.

    ``url`` is ``ws://host:port`` or ``wss://host:port``; ``ssl_context`` overrides the
    default certificate verification for ``wss``. ``client_name`` appears in the server's
    audit trail. With ``require_operator=True`` a viewer role is an error
    (:class:`ControlAuthError`) instead of a read-only session. ``scope="fleet"`` asks a
    server with a fleet for every node's figures and events (refused with code ``no_fleet``
    by a server without one).

    Raises :class:`ControlConnectionError` when the server cannot be reached or is not a
    control server, and :class:`ControlAuthError` when it refuses the token.
    """
    if not math.isfinite(connect_timeout) or connect_timeout <= 0:
        raise ValueError("connect_timeout must be a positive number")
    raw_token = token.get_secret_value() if isinstance(token, Secret) else token
    hello = proto.Hello(
        token=raw_token, client=client_name, protocol=proto.PROTOCOL_VERSION, scope=scope
    )
    target = _parse_url(url)
    try:
        async with trio.open_nursery() as nursery:
            ws, stream = await _connect(nursery, url, target, ssl_context, connect_timeout)
            try:
                try:
                    with trio.fail_after(connect_timeout):
                        welcome = await _handshake(ws, url, hello)
                except trio.TooSlowError:
                    raise ControlConnectionError(
                        f"{url}: no welcome within {connect_timeout:g}s"
                    ) from None
                if require_operator and welcome.role != "operator":
                    raise ControlAuthError(
                        f"{url}: token not accepted (connected read-only, as {welcome.role})",
                        code=proto.ErrorCode.FORBIDDEN,
                    )
                client = ControlClient(ws, welcome, buffer=buffer, command_timeout=command_timeout)
                nursery.start_soon(client._read_loop)
                yield client
            finally:
                # Bounded and shielded: leaving must not hang on a peer that stopped reading.
                # When we are being cancelled, trio-websocket's reader (in this nursery) is
                # cancelled too and can never see the server's half of the closing handshake:
                # send our close frame and hang up rather than wait for it.
                cancelled = trio.current_effective_deadline() == -math.inf
                grace = _CANCELLED_CLOSE_GRACE if cancelled else _DISCONNECT_TIMEOUT
                with trio.move_on_after(grace) as closing:
                    closing.shield = True
                    await ws.aclose()
                # When the server closed first, trio-websocket's client side answers the close
                # but leaves the TCP connection open; hang up so the server is not kept waiting.
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Our reader never raises and trio-websocket's only for a refused upgrade, so a group
        # holds one error (the application's, or that refusal): raise it as itself, as
        # open_supervisor does.
        leaf = _single_leaf(group)
        if isinstance(leaf, ConnectionRejected):
            raise ControlConnectionError(
                f"could not connect to {url}: the server refused the websocket upgrade "
                f"(HTTP {leaf.status_code}; is it a rakka-trio control server?)",
                code="connect_failed",
            ) from None
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


class _Target:
    """Where a control URL points."""

    def __init__(self, host: str, port: int, resource: str, tls: bool) -> None:
        self.host = host
        self.port = port
        self.resource = resource
        self.tls = tls


def _parse_url(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ControlConnectionError(f"bad control URL {url!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ControlConnectionError(f"{url!r} is not a ws://host:port or wss://host:port URL")
    tls = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.hostname, port or (443 if tls else 80), resource, tls)


async def _connect(
    nursery: trio.Nursery,
    url: str,
    target: _Target,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float,
) -> tuple[trio_websocket.WebSocketConnection, trio.abc.Stream]:
    """TCP, then TLS (handshaken here, so a certificate problem is reported as such rather
    than as a stalled websocket handshake), then the websocket upgrade; all within
    ``connect_timeout``. trio-websocket's reader task runs in ``nursery``. Returns the
    websocket and the stream under it (which the caller closes)."""
    stream: trio.abc.Stream | None = None
    connected = False
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(target.host, target.port)
            stream = tcp
            if target.tls:
                context = ssl_context if ssl_context is not None else ssl.create_default_context()
                tls = trio.SSLStream(
                    tcp, context, server_hostname=target.host, https_compatible=True
                )
                stream = tls
                await tls.do_handshake()
            default_port = 443 if target.tls else 80
            host = f"[{target.host}]" if ":" in target.host else target.host
            host_header = host if target.port == default_port else f"{host}:{target.port}"
            # A refused upgrade (an HTTP error status) is raised by trio-websocket's reader
            # task into ``nursery``; open_control_client turns it into a connection error.
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host_header, target.resource, max_message_size=_MAX_FRAME
            )
            connected = True
            return ws, stream
    except trio.TooSlowError:
        failure = (
            f"timed out after {connect_timeout:g}s (is it a rakka-trio control server, "
            "and is ws:// versus wss:// right?)"
        )
    except (OSError, trio.BrokenResourceError, HandshakeError, ConnectionClosed) as exc:
        failure = connect_failure(exc)
    finally:
        if not connected and stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
    raise ControlConnectionError(f"could not connect to {url}: {failure}", code="connect_failed")
