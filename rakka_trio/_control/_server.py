"""The control-plane server: a websocket feed of breaker events and operator commands.

Protocol v1 is described in ``docs/control-plane.md`` and :mod:`._schema`. The server
accepts TCP connections itself and runs each in one task that contains everything raised
inside it (a websocket protocol error, a network failure, a bug): one connection can only
ever end itself, never the listener or the application around it. Admission
(:mod:`._admission`) turns a socket into an operator or a viewer; :mod:`._feed` serves it.
Tokens are compared in constant time and are never logged or echoed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio
import trio_websocket
import wsproto.utilities
from trio_websocket import ConnectionClosed

from .._credentials import Secret
from .._supervisor import Supervisor
from ._admission import Gate
from ._connection import (
    _CLOSE_TIMEOUT,
    _HARD_LIMIT_FACTOR,
    _LOG_INTERVAL,
    OPERATOR,
    ControlServerStatistics,
    _Counters,
    _digest,
    _is_loopback,
)
from ._feed import Feed
from ._fleet_scope import FleetScope, fleet_of
from ._guards import LogLimiter, normalize_origins, peer_key
from ._metrics_http import MetricsHttp
from ._transport import listener_address, open_listeners, stream_peer

if TYPE_CHECKING:
    from .._fleet import Fleet

log = logging.getLogger("rakka_trio.control")

# Errors that end a connection without being a bug here: the peer broke the websocket
# protocol, or the network (or TLS) failed under it.
_PEER_ERRORS = (
    wsproto.utilities.LocalProtocolError,
    wsproto.utilities.RemoteProtocolError,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
    OSError,
)


class ControlServer:
    """A running control server, handed back by ``await nursery.start(serve_control, ...)``.

    ``host``/``port``/``url`` describe the bound address (port 0 resolves to the real port).
    :meth:`close` stops it (the task running :func:`serve_control` returns).
    """

    def __init__(
        self,
        sup: Supervisor | None,
        *,
        fleet: Fleet | None = None,
        token_digest: bytes | None,
        allow_viewers: bool,
        allowed_origins: frozenset[str],
        max_message_size: int,
        max_connections: int,
        max_unauthenticated_per_ip: int,
        command_rate: float,
        command_burst: int,
        event_buffer: int,
        hello_timeout: float,
        send_timeout: float,
        tls: bool,
        metrics_public: bool = False,
    ) -> None:
        self._tls = tls
        self._allow_viewers = allow_viewers
        self._scope = trio.CancelScope()
        self._counters = _Counters()
        self._log = LogLimiter(_LOG_INTERVAL)
        # The fleet scope, when the server has a fleet: the supervisor's, or (no supervisor)
        # the fleet a fleet server watches, which is then the only scope it serves.
        self._fleet = None
        if fleet is not None:
            self._fleet = FleetScope(
                fleet, counters=self._counters, log_limiter=self._log, event_buffer=event_buffer
            )
        self._feed = Feed(
            sup,
            fleet=self._fleet,
            counters=self._counters,
            log_limiter=self._log,
            max_message_size=max_message_size,
            command_rate=command_rate,
            command_burst=command_burst,
            event_buffer=event_buffer,
            send_timeout=send_timeout,
        )
        self._gate = Gate(
            counters=self._counters,
            log_limiter=self._log,
            served=lambda: len(self._feed.connections),
            token_digest=token_digest,
            allow_viewers=allow_viewers,
            allowed_origins=allowed_origins,
            max_connections=max_connections,
            max_unauthenticated_per_ip=max_unauthenticated_per_ip,
            max_frame_size=max_message_size * _HARD_LIMIT_FACTOR,
            max_message_size=max_message_size,
            hello_timeout=hello_timeout,
            metrics=None
            if sup is None
            else lambda throttle: MetricsHttp(
                sup,
                token_digest=token_digest,
                public=metrics_public,
                throttle=throttle,
                log_limiter=self._log,
            ),
            fleet_scope=None if fleet is None else "node" if sup is not None else "fleet",
        )
        self._host = ""
        self._port = 0

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
        c = self._counters
        connections = self._feed.connections
        operators = sum(1 for conn in connections if conn.role == OPERATOR)
        return ControlServerStatistics(
            active_connections=len(connections),
            operators=operators,
            viewers=len(connections) - operators,
            unauthenticated=self._gate.waiting,
            connections_total=c.connections_total,
            refused_handshakes=c.refused_handshakes,
            refused_origin=c.refused_origin,
            evicted_unauthenticated=self._gate.evicted,
            hello_timeouts=c.hello_timeouts,
            failed_hellos=c.failed_hellos,
            throttled_hellos=c.throttled_hellos,
            refused_auth=c.refused_auth,
            refused_capacity=c.refused_capacity,
            closed_for_abuse=c.closed_for_abuse,
            connection_errors=c.connection_errors,
            commands=c.commands,
            errors_sent=c.errors_sent,
            events_dropped=c.events_dropped,
            stats_broadcasts=c.stats_broadcasts,
        )

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._scope.cancel()

    def __repr__(self) -> str:
        return f"<ControlServer {self.url} connections={len(self._feed.connections)}>"

    # --- one TCP connection, contained ----------------------------------------------------

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        """The listener's handler for one TCP connection. Nothing raised inside it leaves
        it: an error in one connection must never reach the listener (every other client)
        or the application's nursery. Only cancellation (and ``KeyboardInterrupt``) pass."""
        address, peer = stream_peer(stream)
        try:
            await self._connection(stream, peer, peer_key(address))
        except* ConnectionClosed:
            pass  # the client went away; nothing to tell it
        except* Exception as group:
            self._connection_failed(peer, group)
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
                scope.shield = True
                # An error here means the socket was already broken: it is closed anyway.
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def _connection(self, stream: trio.abc.Stream, peer: str, key: str) -> None:
        self._counters.connections_total += 1
        async with trio.open_nursery() as nursery:
            try:
                conn = await self._gate.admit(nursery, stream, peer, key)
                if conn is not None:
                    await self._feed.serve(conn)
            finally:
                nursery.cancel_scope.cancel()  # the websocket's reader task

    def _connection_failed(self, peer: str, group: BaseExceptionGroup[Exception]) -> None:
        self._counters.connection_errors += 1
        unexpected = group.subgroup(lambda e: not isinstance(e, _PEER_ERRORS))
        if unexpected is None:
            names = sorted({type(e).__name__ for e in _leaves(group)})
            self._log.log(
                log,
                logging.WARNING,
                "peer-error",
                "control: connection from %s closed after a protocol or network error (%s)",
                peer,
                ", ".join(names),
            )
        else:
            self._log.log(
                log,
                logging.ERROR,
                "internal-error",
                "control: connection from %s failed",
                peer,
                exc_info=unexpected,
            )


def _leaves(group: BaseExceptionGroup[Exception]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def serve_control(
    sup: Supervisor,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | Secret | None,
    allow_viewers: bool = False,
    allowed_origins: Iterable[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 64 * 1024,
    max_connections: int = 64,
    max_unauthenticated_per_ip: int = 8,
    command_rate: float = 10.0,
    command_burst: int = 20,
    event_buffer: int = 256,
    hello_timeout: float = 10.0,
    send_timeout: float = 30.0,
    metrics_public: bool = False,
    task_status: trio.TaskStatus[ControlServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane for ``sup`` until cancelled (or :meth:`ControlServer.close`).

    Start it with ``srv = await nursery.start(functools.partial(serve_control, sup, host,
    port, token=t))``; ``srv.port`` is the bound port (port 0 picks a free one). Nothing a
    client does can make this function raise: each connection's errors end that connection.

    * ``token``: clients presenting it in ``hello`` are operators (may send commands).
      ``None`` means there is no operator: only useful with ``allow_viewers=True``.
    * ``allow_viewers``: admit clients without a valid token as read-only viewers; otherwise
      they are sent an ``unauthorized`` error and disconnected.
    * ``allowed_origins``: browser origins (``"https://ops.example.com"``) allowed to
      connect, or ``["*"]`` for any. A handshake carrying any other ``Origin`` header is
      refused with HTTP 403; clients that send none (the CLI, scripts) are not affected.
    * ``ssl_context``: serve ``wss://``. Without it tokens cross the network in clear text,
      which is why the default ``host`` is loopback.
    * ``max_message_size``: larger client frames get a ``too_large`` error; frames beyond 4x
      that close the connection (1009).
    * ``max_connections``: viewers beyond this many connections get
      ``too_many_connections`` and a close; operators are always admitted. Also the most
      sockets that may wait for their ``hello`` at once (the oldest is closed for a newcomer).
    * ``max_unauthenticated_per_ip``: sockets from one address (one IPv6 /64) that may wait
      for their ``hello`` at once; a newcomer beyond it closes that peer's oldest one.
    * ``command_rate``/``command_burst``: each client frame after ``hello`` spends one token
      of a per-connection bucket refilled at ``command_rate``/s; over the limit the frame is
      answered with ``rate_limited``, and a client that sends another ``command_burst``
      frames while limited is disconnected.
    * ``event_buffer``: events queued per connection before the oldest are dropped (the
      client receives ``lagged``).
    * ``hello_timeout``: time allowed for the websocket handshake and the ``hello``
      together, from the moment the TCP connection is accepted.
    * ``send_timeout``: a client that does not take a frame within this long is disconnected.
    * ``metrics_public``: serve ``GET /metrics`` (Prometheus text, on the same port) without
      the token; by default it needs ``Authorization: Bearer TOKEN`` (401 otherwise).

    A failed hello (a wrong token, or none where viewers are not allowed) delays the next
    hello from the same peer, doubling from 50 ms up to 2 s.
    """
    server = build_server(
        sup,
        fleet_of(sup),
        token=token,
        allow_viewers=allow_viewers,
        allowed_origins=allowed_origins,
        tls=ssl_context is not None,
        max_message_size=max_message_size,
        max_connections=max_connections,
        max_unauthenticated_per_ip=max_unauthenticated_per_ip,
        command_rate=command_rate,
        command_burst=command_burst,
        event_buffer=event_buffer,
        hello_timeout=hello_timeout,
        send_timeout=send_timeout,
        metrics_public=metrics_public,
    )
    await run_server(server, host, port, ssl_context, task_status)


def build_server(
    sup: Supervisor | None,
    fleet: Fleet | None,
    *,
    token: str | Secret | None,
    allow_viewers: bool,
    allowed_origins: Iterable[str] | None,
    tls: bool,
    max_message_size: int,
    max_connections: int,
    max_unauthenticated_per_ip: int,
    command_rate: float,
    command_burst: int,
    event_buffer: int,
    hello_timeout: float,
    send_timeout: float,
    metrics_public: bool = False,
) -> ControlServer:
    """Check the options of :func:`serve_control` (or the fleet server's) and build the
    server (not yet listening)."""
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
        ("max_unauthenticated_per_ip", max_unauthenticated_per_ip),
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
    return ControlServer(
        sup,
        fleet=fleet,
        token_digest=None if token is None else _digest(token.get_secret_value()),
        allow_viewers=allow_viewers,
        allowed_origins=normalize_origins(allowed_origins),
        max_message_size=max_message_size,
        max_connections=max_connections,
        max_unauthenticated_per_ip=max_unauthenticated_per_ip,
        command_rate=float(command_rate),
        command_burst=command_burst,
        event_buffer=event_buffer,
        hello_timeout=float(hello_timeout),
        send_timeout=float(send_timeout),
        tls=tls,
        metrics_public=bool(metrics_public),
    )


async def run_server(
    server: ControlServer,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    task_status: trio.TaskStatus[ControlServer],
) -> None:
    """Listen and serve until cancelled or :meth:`ControlServer.close`."""
    if ssl_context is None and not _is_loopback(host):
        log.warning(
            "control: serving on %s without TLS: the token and commands travel in clear text",
            host,
        )
    with server._scope:
        listeners = await open_listeners(host, port, ssl_context)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(trio.serve_listeners, server._serve_stream, listeners)
            )
            nursery.start_soon(server._feed.broadcast_stats)
            server._host, server._port = listener_address(listeners[0])
            fleet = server._fleet
            if fleet is not None:
                nursery.start_soon(fleet.run)
            log.info(
                "control: listening on %s (viewers %s%s)",
                server.url,
                "allowed" if server._allow_viewers else "refused",
                f", fleet {fleet.fleet.name}" if fleet is not None else "",
            )
            # A fleet node advertises its console in its record, unless the application
            # already set a URL (a proxy's, say). A fleet server is no node: it has no record.
            node = fleet.fleet if fleet is not None else None
            if node is not None and (node.statistics().role != "node" or node.control_url):
                node = None
            if node is not None:
                node.set_control_url(_advertised_url(server))
            try:
                task_status.started(server)
                await trio.sleep_forever()
            finally:
                if node is not None:
                    node.set_control_url(None)


def _advertised_url(server: ControlServer) -> str:
    """The server's URL as other machines would dial it (a wildcard address becomes this
    machine's name)."""
    if server.host in ("0.0.0.0", "::", ""):
        scheme = "wss" if server._tls else "ws"
        return f"{scheme}://{socket.gethostname()}:{server.port}"
    return server.url
