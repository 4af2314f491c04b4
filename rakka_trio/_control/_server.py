"""The control-plane server: a websocket feed of breaker events and operator commands.

Protocol v1 is described in ``docs/control-plane.md`` and :mod:`._schema`. Each connection
runs two tasks in its own nursery:

* the **reader** parses client frames, applies the per-connection rate limit and queues one
  answer (an ``ack`` or an ``error``) per frame in a small bounded reply queue; when that
  queue is full it stops reading, which pushes back on the client's TCP connection;
* the **writer** sends the connection's supervisor events and the answers. Before each answer
  it sends every event already queued, so an ``ack`` always arrives *after* the transition its
  command caused. The event subscription is bounded and drops its oldest events when this
  client falls behind (the client then gets a ``lagged`` frame), so a client that never reads
  can only ever slow itself down — publishing an event never waits for any connection.

Every send has a deadline (``send_timeout``): a client that has stopped reading altogether is
disconnected instead of holding a connection slot forever. Anything unexpected in one
connection is logged and closes that connection only; the server keeps serving the others.
Tokens are compared in constant time and are never logged or echoed.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import logging
import math
import ssl
from collections import OrderedDict

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from .._credentials import Secret
from .._errors import RakkaError, UnknownEndpoint
from .._events import Event, Lagged, Subscription
from .._redact import redact
from .._supervisor import Supervisor
from .._version import __version__
from . import _protocol as proto
from ._connection import (
    _CLOSE_TIMEOUT,
    _ENCODE_CACHE,
    _HARD_LIMIT_FACTOR,
    _REPLY_BUFFER,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    OPERATOR,
    VIEWER,
    ControlServerStatistics,
    _Connection,
    _digest,
    _is_loopback,
    _peer,
    _SlowClient,
    _TokenBucket,
)

log = logging.getLogger("rakka_trio.control")


class ControlServer:
    """A running control server, handed back by ``await nursery.start(serve_control, ...)``.

    ``host``/``port``/``url`` describe the bound address (port 0 resolves to the real port).
    :meth:`close` stops it (the task running :func:`serve_control` returns).
    """

    def __init__(
        self,
        sup: Supervisor,
        *,
        token_digest: bytes | None,
        allow_viewers: bool,
        max_message_size: int,
        max_connections: int,
        command_rate: float,
        command_burst: int,
        event_buffer: int,
        hello_timeout: float,
        send_timeout: float,
        tls: bool,
    ) -> None:
        self._sup = sup
        self._token_digest = token_digest
        self._allow_viewers = allow_viewers
        self._max_message_size = max_message_size
        self._max_connections = max_connections
        self._command_rate = command_rate
        self._command_burst = command_burst
        self._event_buffer = event_buffer
        self._drain_cap = 4 * event_buffer
        self._hello_timeout = hello_timeout
        self._send_timeout = send_timeout
        self._tls = tls
        self._scope = trio.CancelScope()
        self._ids = itertools.count(1)
        self._pending = 0  # accepted, not yet finished (counts towards max_connections)
        self._connections: set[_Connection] = set()
        self._encoded: OrderedDict[int, tuple[Event, str | None]] = OrderedDict()
        self._host = ""
        self._port = 0
        self._connections_total = 0
        self._refused_auth = 0
        self._refused_capacity = 0
        self._closed_for_abuse = 0
        self._commands = 0
        self._errors_sent = 0
        self._events_dropped = 0

    # --- public ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when 0 was requested)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS): what clients connect to."""
        scheme = "wss" if self._tls else "ws"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    def statistics(self) -> ControlServerStatistics:
        """A snapshot of the server's counters."""
        operators = sum(1 for c in self._connections if c.role == OPERATOR)
        return ControlServerStatistics(
            active_connections=len(self._connections),
            operators=operators,
            viewers=len(self._connections) - operators,
            connections_total=self._connections_total,
            refused_auth=self._refused_auth,
            refused_capacity=self._refused_capacity,
            closed_for_abuse=self._closed_for_abuse,
            commands=self._commands,
            errors_sent=self._errors_sent,
            events_dropped=self._events_dropped,
        )

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._scope.cancel()

    def __repr__(self) -> str:
        return f"<ControlServer {self.url} connections={len(self._connections)}>"

    # --- connection lifecycle -------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        """trio-websocket's per-connection handler. Never raises an Exception: an error in
        one connection must not take the listener (and every other client) down with it."""
        peer = _peer(request.remote)
        self._connections_total += 1
        ws: WebSocketConnection | None = None
        if self._pending >= self._max_connections:
            self._refused_capacity += 1
            log.warning(
                "control: refusing %s: %d connections is the limit", peer, self._max_connections
            )
            try:
                ws = await request.accept()
                await self._refuse(
                    ws,
                    proto.ErrorCode.TOO_MANY_CONNECTIONS,
                    f"the server allows {self._max_connections} connections; try again later",
                    CLOSE_TRY_AGAIN_LATER,
                    count_abuse=False,
                )
            except ConnectionClosed:
                pass
            except Exception:
                log.exception("control: error while refusing %s", peer)
            return
        self._pending += 1
        conn: _Connection | None = None
        try:
            ws = await request.accept()
            conn = _Connection(next(self._ids), ws, peer)
            await self._serve(conn)
        except ConnectionClosed:
            pass  # the client went away; nothing to tell it
        except Exception:
            log.exception("control: connection from %s failed", peer)
            if ws is not None:
                await self._close(ws, CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            self._pending -= 1
            if conn is not None:
                self._connections.discard(conn)

    async def _serve(self, conn: _Connection) -> None:
        hello = await self._receive_hello(conn)
        if hello is None:
            return
        role = self._authenticate(hello.token)
        client = redact(hello.client)
        if role is None:
            self._refused_auth += 1
            log.warning("control: refused %s (client %r): no valid token", conn.peer, client)
            await self._refuse(
                conn.ws,
                proto.ErrorCode.UNAUTHORIZED,
                "a valid operator token is required",
                CLOSE_POLICY_VIOLATION,
                count_abuse=False,
            )
            return
        conn.role = role
        conn.actor = f"{client}@{conn.peer}"
        # Subscribe before taking the snapshot, so nothing that happens in between is lost.
        async with self._sup.open_subscription(buffer=self._event_buffer, stats=True) as sub:
            welcome = proto.WelcomeFrame(
                protocol=proto.PROTOCOL_VERSION,
                role=role,
                server=f"rakka-trio/{__version__}",
                stats_interval=self._sup.config.stats_interval,
                snapshot=proto.snapshot_from_statistics(self._sup.statistics()),
            )
            try:
                await self._send(conn, proto.encode(welcome))
            except _SlowClient:
                await self._drop_slow(conn)
                return
            self._connections.add(conn)
            log.info("control: %s connected as %s (connection %d)", conn.actor, role, conn.id)
            replies_send, replies_recv = trio.open_memory_channel[proto.ServerFrame](_REPLY_BUFFER)
            writer_done = trio.Event()
            abuse: str | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._write_frames, conn, sub, replies_recv, nursery.cancel_scope, writer_done
                )
                async with replies_send:
                    abuse = await self._read_frames(conn, replies_send)
                # The reply queue is closed: let the writer flush what is queued (answers to
                # a flood included, so the client learns why it is being cut off), briefly.
                if conn.wake is not None:
                    conn.wake.cancel()
                with trio.move_on_after(_CLOSE_TIMEOUT):
                    await writer_done.wait()
                nursery.cancel_scope.cancel()
            if abuse is not None:
                await self._close(conn.ws, CLOSE_POLICY_VIOLATION, abuse)
            log.info("control: %s disconnected (connection %d)", conn.actor, conn.id)

    async def _receive_hello(self, conn: _Connection) -> proto.Hello | None:
        """The first frame, which must be a valid ``hello``; on anything else the client is
        told why and disconnected (``None``)."""
        with trio.move_on_after(self._hello_timeout) as scope:
            message = await conn.ws.get_message()
        if scope.cancelled_caught:
            await self._refuse(
                conn.ws,
                proto.ErrorCode.HELLO_TIMEOUT,
                f"no hello within {self._hello_timeout:g}s",
                CLOSE_POLICY_VIOLATION,
            )
            return None
        problem = self._frame_problem(message)
        if problem is not None:
            code, text = problem
            close = CLOSE_TOO_BIG if code == proto.ErrorCode.TOO_LARGE else CLOSE_PROTOCOL_ERROR
            await self._refuse(conn.ws, code, text, close)
            return None
        assert isinstance(message, str)
        try:
            msg = proto.decode_client_message(message)
        except proto.ProtocolError as exc:
            await self._refuse(conn.ws, exc.code, exc.message, CLOSE_PROTOCOL_ERROR, id=exc.id)
            return None
        if not isinstance(msg, proto.Hello):
            await self._refuse(
                conn.ws,
                proto.ErrorCode.HELLO_REQUIRED,
                'the first frame must be {"type":"hello","token":...,"client":...}',
                CLOSE_PROTOCOL_ERROR,
                id=msg.id,
            )
            return None
        if msg.protocol is not None and msg.protocol != proto.PROTOCOL_VERSION:
            await self._refuse(
                conn.ws,
                proto.ErrorCode.UNSUPPORTED_PROTOCOL,
                f"this server speaks protocol {proto.PROTOCOL_VERSION}",
                CLOSE_PROTOCOL_ERROR,
            )
            return None
        return msg

    def _authenticate(self, token: str | None) -> str | None:
        """``"operator"``, ``"viewer"`` or ``None`` (refused)."""
        digest = self._token_digest
        if token is not None and digest is not None and hmac.compare_digest(_digest(token), digest):
            return OPERATOR
        return VIEWER if self._allow_viewers else None

    # --- the two per-connection tasks ------------------------------------------------------

    async def _read_frames(
        self, conn: _Connection, replies: trio.MemorySendChannel[proto.ServerFrame]
    ) -> str | None:
        """Answer frames until the client leaves (``None``) or must be cut off (the close
        reason)."""
        bucket = _TokenBucket(self._command_rate, self._command_burst)
        while True:
            try:
                message = await conn.ws.get_message()
            except ConnectionClosed:
                return None
            if not bucket.take():
                conn.strikes += 1
                if conn.strikes > self._command_burst:
                    # Still flooding after a whole burst's worth of rate_limited errors.
                    self._closed_for_abuse += 1
                    log.warning("control: closing %s: frame flood", conn.actor)
                    return "flood: too many frames"
                # Parse refused frames only to echo their id, and only if they are small.
                small = isinstance(message, str) and len(message) <= self._max_message_size
                msg_id = proto.peek_id(message) if small and isinstance(message, str) else None
                reply: proto.ServerFrame = self._error(
                    msg_id,
                    proto.ErrorCode.RATE_LIMITED,
                    f"too many frames: at most {self._command_rate:g} per second "
                    f"(bursts of {self._command_burst}); this one was not processed",
                )
            else:
                conn.strikes = 0
                reply = self._answer(conn, message)
            await replies.send(reply)
            if conn.wake is not None:
                conn.wake.cancel()  # the writer is idle, waiting for events: wake it

    async def _write_frames(
        self,
        conn: _Connection,
        sub: Subscription,
        replies: trio.MemoryReceiveChannel[proto.ServerFrame],
        scope: trio.CancelScope,
        done: trio.Event,
    ) -> None:
        """The only task that sends after the welcome: events first, then one answer.
        Ending for any reason ends the connection (``scope``)."""
        try:
            async with replies:
                while True:
                    # Every event already queued goes out before the next answer, so an ack
                    # follows the events its command caused. The cap keeps a steady stream of
                    # events from starving the answers.
                    sent = 0
                    while sent < self._drain_cap:
                        try:
                            event = sub.receive_nowait()
                        except trio.WouldBlock:
                            break
                        await self._send_event(conn, event)
                        sent += 1
                    try:
                        frame = replies.receive_nowait()
                    except trio.WouldBlock:
                        pass
                    except trio.EndOfChannel:
                        return  # the reader has finished
                    else:
                        if isinstance(frame, proto.ErrorFrame):
                            self._errors_sent += 1
                        await self._send(conn, proto.encode(frame))
                        continue
                    if sent:
                        continue  # more may have arrived while we were sending
                    waited = await self._wait_for_event(conn, sub)
                    if waited is not None:
                        await self._send_event(conn, waited)
        except trio.EndOfChannel:
            # The subscription only ends when the supervisor shuts down.
            await self._refuse(
                conn.ws,
                proto.ErrorCode.SHUTTING_DOWN,
                "the supervisor is shutting down",
                CLOSE_GOING_AWAY,
                count_abuse=False,
            )
        except ConnectionClosed:
            pass
        except _SlowClient:
            await self._drop_slow(conn)
        finally:
            done.set()
            scope.cancel()

    async def _wait_for_event(self, conn: _Connection, sub: Subscription) -> Event | None:
        """Wait for the next event; ``None`` if the reader queued an answer meanwhile (it
        cancels ``conn.wake``). ``Subscription.receive`` consumes nothing when cancelled."""
        event: Event | None = None
        with trio.CancelScope() as wake:
            conn.wake = wake
            try:
                event = await sub.receive()
            finally:
                conn.wake = None
        return event

    async def _send_event(self, conn: _Connection, event: Event) -> None:
        if isinstance(event, Lagged):
            self._events_dropped += event.dropped
        text = self._encode_event(event)
        if text is not None:
            await self._send(conn, text)

    # --- frames and commands --------------------------------------------------------------

    def _frame_problem(self, message: str | bytes) -> tuple[str, str] | None:
        if isinstance(message, bytes):
            return proto.ErrorCode.BINARY_FRAME, "binary frames are not accepted; send JSON text"
        if len(message) > self._max_message_size:
            return (
                proto.ErrorCode.TOO_LARGE,
                f"frame of {len(message)} characters exceeds the limit of {self._max_message_size}",
            )
        return None

    def _answer(self, conn: _Connection, message: str | bytes) -> proto.ServerFrame:
        """The reply to one frame within the rate limit: always an ack or an error."""
        problem = self._frame_problem(message)
        if problem is not None:
            return self._error(None, *problem)
        assert isinstance(message, str)
        try:
            msg = proto.decode_client_message(message)
        except proto.ProtocolError as exc:
            return self._error(exc.id, exc.code, exc.message)
        if isinstance(msg, proto.Hello):
            return self._error(None, proto.ErrorCode.UNEXPECTED, "hello was already received")
        if isinstance(msg, proto.GetState):
            return proto.AckFrame(
                id=msg.id,
                command=msg.TYPE,
                snapshot=proto.snapshot_from_statistics(self._sup.statistics()),
            )
        if conn.role != OPERATOR:
            log.warning("control: refused %s from viewer %s", msg.TYPE, conn.actor)
            return self._error(
                msg.id,
                proto.ErrorCode.FORBIDDEN,
                "this connection is read-only (viewer); commands need the operator token",
            )
        return self._execute(conn, msg)

    def _execute(
        self, conn: _Connection, msg: proto.ForceOpen | proto.Reset | proto.Disable
    ) -> proto.ServerFrame:
        sup = self._sup
        reason = redact(msg.reason) if msg.reason is not None else None
        try:
            if isinstance(msg, proto.ForceOpen):
                sup.force_open(msg.endpoint, msg.duration, reason, actor=conn.actor)
            elif isinstance(msg, proto.Disable):
                sup.disable(msg.endpoint, msg.duration, reason, actor=conn.actor)
            else:
                sup.reset(msg.endpoint, reason, actor=conn.actor)
            state = sup.breaker(msg.endpoint).state.value
        except UnknownEndpoint:
            known = sup.endpoint_names
            listed = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
            return self._error(
                msg.id,
                proto.ErrorCode.UNKNOWN_ENDPOINT,
                f"unknown endpoint {msg.endpoint!r} (known: {listed or 'none'})",
            )
        except (ValueError, RakkaError) as exc:
            return self._error(msg.id, proto.ErrorCode.INVALID, str(exc))
        except Exception:
            log.exception("control: %s from %s failed", msg.TYPE, conn.actor)
            return self._error(
                msg.id, proto.ErrorCode.INTERNAL, "the command failed; see the server log"
            )
        self._commands += 1
        return proto.AckFrame(id=msg.id, command=msg.TYPE, endpoint=msg.endpoint, state=state)

    def _error(self, msg_id: proto.MessageId | None, code: str, message: str) -> proto.ErrorFrame:
        return proto.ErrorFrame(id=msg_id, code=code, message=redact(message))

    def _encode_event(self, event: Event) -> str | None:
        """The frame text for an event, encoded once however many connections send it."""
        if isinstance(event, Lagged):  # per-connection by nature: nothing to share
            frame = proto.frame_from_event(event)
            return None if frame is None else proto.encode(frame)
        key = id(event)
        hit = self._encoded.get(key)
        # The cache holds the event itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is event:
            return hit[1]
        frame = proto.frame_from_event(event)
        text = None if frame is None else proto.encode(frame)
        self._encoded[key] = (event, text)
        if len(self._encoded) > _ENCODE_CACHE:
            self._encoded.popitem(last=False)
        return text

    # --- sending and closing --------------------------------------------------------------

    async def _send(self, conn: _Connection, text: str) -> None:
        with trio.move_on_after(self._send_timeout) as scope:
            await conn.ws.send_message(text)
        if scope.cancelled_caught:
            raise _SlowClient

    async def _drop_slow(self, conn: _Connection) -> None:
        self._closed_for_abuse += 1
        log.warning(
            "control: closing %s: not reading (a send took over %gs)",
            conn.actor,
            self._send_timeout,
        )
        # No grace period: a client that is not reading will not read a close frame either.
        await self._close(conn.ws, CLOSE_POLICY_VIOLATION, "not reading", grace=0.0)

    async def _refuse(
        self,
        ws: WebSocketConnection,
        code: str,
        message: str,
        close_code: int,
        *,
        id: proto.MessageId | None = None,
        count_abuse: bool = True,
    ) -> None:
        """Send one ``error`` frame, then close; both bounded in time."""
        if count_abuse:
            self._closed_for_abuse += 1
        self._errors_sent += 1
        frame = self._error(id, code, message)
        with trio.move_on_after(_CLOSE_TIMEOUT):
            try:
                await ws.send_message(proto.encode(frame))
            except ConnectionClosed:
                return
        await self._close(ws, close_code, code)

    async def _close(
        self, ws: WebSocketConnection, code: int, reason: str, *, grace: float = _CLOSE_TIMEOUT
    ) -> None:
        """Close the websocket, waiting at most ``grace`` seconds for the closing handshake
        (the TCP connection is closed either way). Shielded: it also runs while the
        connection's tasks are being cancelled."""
        with trio.move_on_after(grace) as scope:
            scope.shield = True
            await ws.aclose(code, reason)


async def serve_control(
    sup: Supervisor,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | Secret | None,
    allow_viewers: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 64 * 1024,
    max_connections: int = 64,
    command_rate: float = 10.0,
    command_burst: int = 20,
    event_buffer: int = 256,
    hello_timeout: float = 10.0,
    send_timeout: float = 30.0,
    task_status: trio.TaskStatus[ControlServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane for ``sup`` until cancelled (or :meth:`ControlServer.close`).

    Start it with ``srv = await nursery.start(functools.partial(serve_control, sup, host,
    port, token=t))``; ``srv.port`` is the bound port (port 0 picks a free one).

    * ``token``: clients presenting it in ``hello`` are operators (may send commands).
      ``None`` means there is no operator: only useful with ``allow_viewers=True``.
    * ``allow_viewers``: admit clients without a valid token as read-only viewers; otherwise
      they are sent an ``unauthorized`` error and disconnected.
    * ``ssl_context``: serve ``wss://``. Without it tokens cross the network in clear text,
      which is why the default ``host`` is loopback.
    * ``max_message_size``: larger client frames get a ``too_large`` error; frames beyond 4x
      that close the connection (1009).
    * ``max_connections``: further connections get ``too_many_connections`` and a close.
    * ``command_rate``/``command_burst``: each client frame after ``hello`` spends one token
      of a per-connection bucket refilled at ``command_rate``/s; over the limit the frame is
      answered with ``rate_limited``, and a client that sends another ``command_burst``
      frames while limited is disconnected.
    * ``event_buffer``: events queued per connection before the oldest are dropped (the
      client receives ``lagged``).
    * ``hello_timeout``: time allowed for the websocket handshake and then the ``hello``.
    * ``send_timeout``: a client that does not take a frame within this long is disconnected.
    """
    if token is not None and not isinstance(token, Secret):
        if not isinstance(token, str):
            raise TypeError("token must be a str, a Secret or None")
        token = Secret(token)  # registers the value with the redactor: it can never be logged
    if token is not None and not token.get_secret_value():
        raise ValueError("token must not be empty")
    if token is None and not allow_viewers:
        raise ValueError("token=None without allow_viewers=True would refuse every client")
    for name, value in (
        ("max_message_size", max_message_size),
        ("max_connections", max_connections),
        ("command_burst", command_burst),
        ("event_buffer", event_buffer),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, number in (
        ("command_rate", command_rate),
        ("hello_timeout", hello_timeout),
        ("send_timeout", send_timeout),
    ):
        if not (isinstance(number, int | float) and math.isfinite(number) and number > 0):
            raise ValueError(f"{name} must be a positive number, got {number!r}")

    server = ControlServer(
        sup,
        token_digest=None if token is None else _digest(token.get_secret_value()),
        allow_viewers=allow_viewers,
        max_message_size=max_message_size,
        max_connections=max_connections,
        command_rate=float(command_rate),
        command_burst=command_burst,
        event_buffer=event_buffer,
        hello_timeout=float(hello_timeout),
        send_timeout=float(send_timeout),
        tls=ssl_context is not None,
    )
    if ssl_context is None and not _is_loopback(host):
        log.warning(
            "control: serving on %s without TLS: the token and commands travel in clear text",
            host,
        )
    with server._scope:
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(
                functools.partial(
                    trio_websocket.serve_websocket,
                    server._handle,
                    host,
                    port,
                    ssl_context,
                    max_message_size=max_message_size * _HARD_LIMIT_FACTOR,
                    connect_timeout=hello_timeout,
                    disconnect_timeout=_CLOSE_TIMEOUT,
                )
            )
            listener = ws_server.listeners[0]
            if isinstance(listener, trio_websocket.Endpoint):
                server._host, server._port = str(listener.address), listener.port
            log.info(
                "control: listening on %s (viewers %s)",
                server.url,
                "allowed" if allow_viewers else "refused",
            )
            task_status.started(server)
