"""The control plane's sockets: listeners, peers, a server-side websocket that runs inside a
scope the server owns, and what a client's failure to connect means.

trio-websocket's ``serve_websocket`` runs each connection's protocol reader in a nursery of
its own, so an error in that reader (wsproto refusing to send a second close frame, say)
escapes into the listener and from there into the application's nursery. The server instead
accepts TCP connections itself and starts the websocket machinery inside the connection's own
task, where every error is contained (see ``ControlServer._serve_stream``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


class ServerWebSocket(WebSocketConnection):
    """A server-side websocket that tells the peer *why* it hangs up on a bad frame.

    wsproto reports a frame it cannot parse (invalid UTF-8 in a text frame: 1007; broken
    framing: 1002) as a close event while the connection is still open, and trio-websocket
    then drops the TCP connection without a close frame. RFC 6455 wants the close code sent.
    """

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            # Not the peer's close (that would have moved the state to REMOTE_CLOSING): our
            # own parser failed. Send the close code; the base class then hangs up.
            with contextlib.suppress(ConnectionClosed):
                await self._send(CloseConnection(code=event.code, reason=event.reason))
        await super()._handle_close_connection_event(event)


async def start_websocket(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> tuple[ServerWebSocket, WebSocketRequest | None]:
    """Run the websocket protocol over ``stream`` (its reader task in ``nursery``) and wait
    for the client's upgrade request; ``None`` when the connection ended without one (not
    HTTP at all, say). The caller bounds the wait and accepts or rejects the request."""
    ws = ServerWebSocket(
        stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size
    )
    reader_done = trio.Event()

    async def read() -> None:
        try:
            await ws._reader_task()
        finally:
            reader_done.set()

    nursery.start_soon(read)
    request: WebSocketRequest | None = None
    async with trio.open_nursery() as race:

        async def wait_for_request() -> None:
            nonlocal request
            request = await ws._get_request()
            race.cancel_scope.cancel()

        race.start_soon(wait_for_request)
        # A reader that stops before the request arrived means no request will: trio-
        # websocket has answered a malformed upgrade (400) or the peer has gone.
        await reader_done.wait()
        race.cancel_scope.cancel()
    return ws, request


async def open_listeners(
    host: str | None, port: int, ssl_context: ssl.SSLContext | None
) -> list[Listener]:
    """TCP (or TLS over TCP) listeners on ``host``:``port``."""
    if ssl_context is None:
        return list(await trio.open_tcp_listeners(port, host=host))
    return list(
        await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
    )


def listener_address(listener: Listener) -> tuple[str, int]:
    """The ``(host, port)`` a listener is bound to."""
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    sock = inner.socket
    host, port, *_ = sock.getsockname()
    return str(host), int(port)


def stream_peer(stream: trio.abc.Stream) -> tuple[str, str]:
    """``(address, "address:port")`` of the remote end (IPv6 in brackets), or ``"unknown"``
    when the socket has already gone."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return "unknown", "unknown"
    try:
        address, port, *_ = inner.socket.getpeername()
    except OSError:
        return "unknown", "unknown"
    address = str(address)
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return address, shown


def connect_failure(exc: BaseException) -> str:
    """Why a client could not connect: the most specific reason in the failure's chain
    (trio wraps each attempt's error in a group under a generic "all attempts failed")."""
    found: list[BaseException] = []
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    for candidate in found:
        if isinstance(candidate, ConnectionRefusedError):
            return "connection refused (is the control server running on that port?)"
    for candidate in found:
        if isinstance(candidate, socket.gaierror):
            return f"cannot resolve the host name ({candidate.strerror})"
        if isinstance(candidate, ssl.SSLError):
            return f"TLS error ({candidate.reason or candidate})"
        if isinstance(candidate, trio_websocket.ConnectionTimeout | TimeoutError):
            return "timed out"
    for candidate in found:
        if isinstance(candidate, OSError) and candidate.strerror:
            return candidate.strerror
    return str(exc) or type(exc).__name__
