"""A small HTTP/1.1 server on Trio and h11, hardened enough to face a hostile client.

The mock provider plugs a handler into it; this module owns the sockets: accepting, parsing with
h11 (keep-alive, chunked bodies, ``Expect: 100-continue``), bounds on everything a client
controls (connections, header and body size, how long a request may take to arrive, how long a
write may block), noticing a client that hangs up while its response is still being produced,
and the two ways of killing a connection on purpose (RST and FIN).

Nothing here blocks the event loop, and every wait is a Trio checkpoint, so a stalled response
is cancellable and never holds up another connection.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import h11
import trio

__all__ = [
    "ConnectionAborted",
    "Handler",
    "HttpRequest",
    "MockServer",
    "MockServerLimits",
    "ResponseWriter",
    "serve_http",
]

log = logging.getLogger("rakka_trio.testing")

_RECV_SIZE: Final = 65536
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 4 * 2**20
_SERVER_HEADER: Final = "rakka-trio-mock"


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class MockServerLimits:
    """Bounds on what one client can make the mock server hold or wait for.

    ``keep_alive_timeout`` bounds how long an idle connection (or one trickling a request head)
    stays open; ``request_timeout`` how long a request body may take to arrive; ``send_timeout``
    how long one write may wait for a client that does not read. A connection beyond
    ``max_connections`` gets a 503 and is closed. ``max_early_bytes`` bounds what is buffered
    from a client that sends its next request before the current response has finished.
    """

    max_connections: int = attrs.field(default=1024, validator=_positive)
    max_header_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    max_body_bytes: int = attrs.field(default=16 * 2**20, validator=_positive)
    keep_alive_timeout: float = attrs.field(default=30.0, validator=_positive)
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    send_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_early_bytes: int = attrs.field(default=64 * 1024, validator=_positive)


@attrs.frozen(kw_only=True)
class HttpRequest:
    """One parsed request. Header names are lowercase; values are decoded as Latin-1."""

    method: str
    target: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    http_version: str

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ConnectionAborted(Exception):
    """Raised through a handler to kill the connection: ``reset=True`` sends RST
    (``SO_LINGER`` 0), ``reset=False`` closes normally (FIN) without finishing the response."""

    def __init__(self, *, reset: bool) -> None:
        super().__init__("reset" if reset else "close")
        self.reset = reset


@attrs.define(eq=False)
class MockServer:
    """A running mock server: where it listens, and a way to stop it.

    Returned by ``await nursery.start(serve_mock_provider, mock)``. :meth:`stop` closes the
    listener and every connection (clients then see connection refused / reset).
    """

    host: str
    port: int
    _scope: trio.CancelScope = attrs.field(repr=False)
    _stats: _ServerStats = attrs.field(repr=False)

    @property
    def url(self) -> str:
        """``http://host:port`` without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections currently open."""
        return self._stats.open

    @property
    def accepted_connections(self) -> int:
        """Connections accepted since the server started."""
        return self._stats.accepted

    def stop(self) -> None:
        """Stop serving. Synchronous; the serving task returns shortly after."""
        self._scope.cancel()


@attrs.define
class _ServerStats:
    open: int = 0
    accepted: int = 0


class ResponseWriter:
    """How a handler answers: :meth:`start`, any number of :meth:`write`, then :meth:`end`.

    Writes go straight to the socket (one write per call, so a streamed event leaves at once).
    :meth:`reset_after` arms a byte budget after which the connection is reset mid-write.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._budget: int | None = None
        self.started = False
        self.finished = False
        self.bytes_sent = 0

    @property
    def peer_gone(self) -> bool:
        """True once the client closed or reset its side of the connection."""
        return self._conn.peer_gone

    def reset_after(self, n: int) -> None:
        """Reset the connection once ``n`` more bytes of this response have been written."""
        self._budget = self.bytes_sent + n

    async def start(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        *,
        content_length: int | None = None,
    ) -> None:
        """Send the status line and headers. Without ``content_length`` the body is chunked."""
        all_headers = [
            ("date", email.utils.formatdate(usegmt=True)),
            ("server", _SERVER_HEADER),
            *headers,
        ]
        if content_length is not None:
            all_headers.append(("content-length", str(content_length)))
        self.started = True
        await self._send(h11.Response(status_code=status, headers=all_headers))

    async def write(self, data: bytes) -> None:
        """Send body bytes (one HTTP chunk when the body is chunked)."""
        if data:
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        """Finish the response (the terminating zero-length chunk when chunked)."""
        await self._send(h11.EndOfMessage())
        self.finished = True

    async def send_json(self, status: int, headers: Sequence[tuple[str, str]], obj: object) -> None:
        """A whole JSON response in one go."""
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        hdrs = [("content-type", "application/json"), *headers]
        await self.start(status, hdrs, content_length=len(body))
        await self.write(body)
        await self.end()

    async def _send(self, event: h11.Event) -> None:
        data = self._conn.h11.send(event)
        if not data:
            return
        if self._budget is not None:
            room = self._budget - self.bytes_sent
            if len(data) >= room:
                if room > 0:
                    await self._conn.send_raw(data[:room])
                    self.bytes_sent += room
                raise ConnectionAborted(reset=True)
        await self._conn.send_raw(data)
        self.bytes_sent += len(data)


Handler = Callable[[HttpRequest, ResponseWriter], Awaitable[None]]


class _Connection:
    def __init__(
        self, stream: trio.SocketStream, handler: Handler, limits: MockServerLimits
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.peer_gone = False
        self.linger = False  # close with _linger_close: the client may still be sending

    async def send_raw(self, data: bytes) -> None:
        # A client that stops reading must not pin this task (and its buffers) forever.
        with trio.move_on_after(self.limits.send_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise ConnectionAborted(reset=True)

    async def _next_event(self) -> h11.Event | None:
        """The next h11 event, reading as needed; ``None`` if h11 is paused (it only pauses
        on a protocol misuse, after which the connection is closed)."""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            try:
                data = await self.stream.receive_some(_RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.peer_gone = True
            self.h11.receive_data(data)

    async def _read_body(self) -> bytes | None:
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body_bytes:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:  # ConnectionClosed: the client gave up mid-body
                return None

    async def _simple_error(self, status: int, message: str) -> None:
        """Answer a request the handler never saw; the connection is then closed."""
        self.linger = True
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        ).encode()
        headers = [
            ("date", email.utils.formatdate(usegmt=True)),
            ("server", _SERVER_HEADER),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            await self.send_raw(self.h11.send(h11.Response(status_code=status, headers=headers)))
            await self.send_raw(self.h11.send(h11.Data(data=body)))
            await self.send_raw(self.h11.send(h11.EndOfMessage()))
        except (ConnectionAborted, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client is gone; closing is all that is left to do

    async def run(self) -> None:
        # The socket is closed in `finally`, so even a cancelled connection (server stopping
        # mid-linger, say) never leaks its file descriptor.
        try:
            try:
                await self._serve()
            except ConnectionAborted as exc:
                if exc.reset:
                    self._arm_reset()
                return
            except h11.RemoteProtocolError as exc:
                await self._simple_error(exc.error_status_hint, f"Bad request: {exc}")
            except _TooLarge:
                await self._simple_error(413, "Request body too large.")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if self.linger:
                await self._linger_close()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _linger_close(self) -> None:
        """Half-close, then read and discard what the client is still sending, briefly.

        Closing a socket with unread input makes the kernel send RST, which can destroy the
        error response before the client reads it; draining first lets the client see why it
        was cut off. Bounded in time and bytes, so a client cannot keep it going.
        """
        with trio.move_on_after(_LINGER_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_eof()
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(_RECV_SIZE)
                    if not data:
                        break
                    drained += len(data)

    async def _serve(self) -> None:
        while True:
            event: h11.Event | None = None
            with trio.move_on_after(self.limits.keep_alive_timeout):
                event = await self._next_event()
            # None: idle (or trickling a request head) for too long. ConnectionClosed: done.
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed (or PAUSED after an error): nothing more to serve
            request = event
            # h11 bounds a head that is still arriving; one that arrived whole in a single read
            # is measured here, so the limit holds however the bytes were split.
            head_size = len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers)
            if head_size > self.limits.max_header_bytes:
                await self._simple_error(431, "Request header fields too large.")
                return
            length = _content_length(request)
            if length is not None and length > self.limits.max_body_bytes:
                raise _TooLarge
            if self.h11.they_are_waiting_for_100_continue:
                await self.send_raw(
                    self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            body: bytes | None = None
            with trio.move_on_after(self.limits.request_timeout) as scope:
                body = await self._read_body()
            if scope.cancelled_caught:
                await self._simple_error(408, "Request body not received in time.")
                return
            if body is None:
                return
            writer = ResponseWriter(self)
            await self._dispatch(_to_request(request, body), writer)
            if self.peer_gone or not writer.finished:
                return
            if h11.MUST_CLOSE in (self.h11.our_state, self.h11.their_state):
                return
            self.h11.start_next_cycle()

    async def _dispatch(self, request: HttpRequest, writer: ResponseWriter) -> None:
        aborted: ConnectionAborted | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, nursery.cancel_scope)
            try:
                await self.handler(request, writer)
            except ConnectionAborted as exc:
                aborted = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.peer_gone = True
            except Exception:
                # A bug in the handler must cost one connection, never the server.
                log.exception("mock provider handler failed on %s %s", request.method, request.path)
                if not writer.started:
                    await self._simple_error(500, "Internal error in the mock provider.")
                aborted = ConnectionAborted(reset=False)
            finally:
                nursery.cancel_scope.cancel()
        if aborted is not None:
            raise aborted

    async def _watch_peer(self, scope: trio.CancelScope) -> None:
        """While a response is produced, notice the client hanging up (and cancel the
        response, so a stalled stream does not outlive its client). Bytes of a next request
        that arrive meanwhile are handed to h11 for later."""
        received = 0
        while received < self.limits.max_early_bytes:
            try:
                data = await self.stream.receive_some(_RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.peer_gone = True
                scope.cancel()
                return
            received += len(data)
            self.h11.receive_data(data)

    def _arm_reset(self) -> None:
        """Make the coming close() abort the connection with RST instead of FIN."""
        # l_onoff=1, l_linger=0: close() discards the send queue and sends RST. If the socket
        # is already dead, closing it is all there is left to do.
        with contextlib.suppress(OSError):
            linger = struct.pack("ii", 1, 0)
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


class _TooLarge(Exception):
    pass


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has already validated it
    return None


def _to_request(request: h11.Request, body: bytes) -> HttpRequest:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    return HttpRequest(
        method=request.method.decode("latin-1"),
        target=target,
        path=path,
        query=query,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers),
        body=body,
        http_version=request.http_version.decode("latin-1"),
    )


async def _refuse(stream: trio.SocketStream) -> None:
    body = (
        b'{"error":{"message":"Too many connections.","type":"server_error",'
        b'"param":null,"code":null}}'
    )
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    try:
        with trio.move_on_after(1.0):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head + body)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: MockServerLimits,
    on_started: Callable[[MockServer], None] | None = None,
    on_change: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[MockServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0: any free port) and serve ``handler`` until cancelled or
    :meth:`MockServer.stop` is called. Reports the bound :class:`MockServer` via ``task_status``
    (and to ``on_started``); ``on_change`` is called whenever a connection opens or closes.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    # A name like "localhost" can resolve to several addresses, each listener on its own free
    # port; serve the first only, so the server has one address to report.
    for extra in listeners[1:]:
        await trio.aclose_forcefully(extra)
    listeners = listeners[:1]
    stats = _ServerStats()

    async def on_connection(stream: trio.SocketStream) -> None:
        stats.accepted += 1
        if stats.open >= limits.max_connections:
            await _refuse(stream)
            return
        stats.open += 1
        if on_change is not None:
            on_change()
        try:
            await _Connection(stream, handler, limits).run()
        except Exception:
            # Whatever one client manages to provoke stays with its connection.
            log.exception("mock provider connection failed")
            await trio.aclose_forcefully(stream)
        finally:
            stats.open -= 1
            if on_change is not None:
                on_change()

    try:
        sockname = listeners[0].socket.getsockname()
        with trio.CancelScope() as scope:
            server = MockServer(host=sockname[0], port=sockname[1], scope=scope, stats=stats)
            if on_started is not None:
                on_started(server)
            task_status.started(server)
            await trio.serve_listeners(on_connection, listeners)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
