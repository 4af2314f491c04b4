"""Admission to the control server: from an accepted TCP connection to an admitted client.

In order: the socket enters the waiting room (limits per peer and in total, the oldest
waiting socket evicted for a newcomer), the websocket upgrade is checked against the
``Origin`` policy, the first frame must be a valid ``hello``, a peer with recent failed
hellos waits its turn, then the token decides the role. Viewers count against
``max_connections``; operators are admitted past it, so the token always gets in. One
deadline (``hello_timeout``) covers the upgrade and the hello. Every refusal is counted and
its log line rate-limited per peer.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio
from trio_websocket import WebSocketConnection

from .._redact import redact
from . import _protocol as proto
from ._connection import (
    _EVICT_GRACE,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    OPERATOR,
    VIEWER,
    _Connection,
    _Counters,
    _digest,
    close_websocket,
    refuse,
)
from ._guards import HelloThrottle, LogLimiter, Waiting, WaitingRoom, refused_origin
from ._transport import start_websocket

if TYPE_CHECKING:
    from ._metrics_http import MetricsHttp

log = logging.getLogger("rakka_trio.control")

_ORIGIN_REFUSED: Final = b"this Origin may not use the control plane (see allowed_origins)\n"


class Gate:
    """Runs each new connection through admission (internal to :class:`ControlServer`)."""

    def __init__(
        self,
        *,
        counters: _Counters,
        log_limiter: LogLimiter,
        served: Callable[[], int],
        token_digest: bytes | None,
        allow_viewers: bool,
        allowed_origins: frozenset[str],
        max_connections: int,
        max_unauthenticated_per_ip: int,
        max_frame_size: int,
        max_message_size: int,
        hello_timeout: float,
        metrics: Callable[[HelloThrottle], MetricsHttp] | None = None,
        fleet_scope: str | None = None,
    ) -> None:
        self._counters = counters
        # None: no fleet (a fleet hello is refused); "node": fleet on request; "fleet": a
        # fleet server with no endpoints of its own, which serves the fleet whatever is asked.
        self._fleet_scope = fleet_scope
        self._log = log_limiter
        self._served = served
        self._token_digest = token_digest
        self._allow_viewers = allow_viewers
        self._origins = allowed_origins
        self._max_connections = max_connections
        self._max_frame_size = max_frame_size
        self._max_message_size = max_message_size
        self._hello_timeout = hello_timeout
        self._room = WaitingRoom(limit=max_connections, per_peer=max_unauthenticated_per_ip)
        self._throttle = HelloThrottle()
        self._ids = itertools.count(1)
        # GET /metrics on the same port (shares the failed-token throttle with hellos).
        self.metrics = metrics(self._throttle) if metrics is not None else None

    @property
    def waiting(self) -> int:
        """Sockets not admitted yet."""
        return len(self._room)

    @property
    def evicted(self) -> int:
        """Waiting sockets closed to make room for newer ones."""
        return self._room.evicted

    async def admit(
        self, nursery: trio.Nursery, stream: trio.abc.Stream, peer: str, key: str
    ) -> _Connection | None:
        """The admitted connection (``role`` set, not yet welcomed), or ``None`` when it was
        refused or went away. The websocket's reader task runs in ``nursery``.

        Decisions are taken inside the waiting scope (which eviction and the hello deadline
        cancel); a refusal is sent after it, bounded on its own, so it is never cut short
        or counted twice."""
        waiting = self._room.enter(key, trio.current_time() + self._hello_timeout)
        ws: WebSocketConnection | None = None
        conn: _Connection | None = None
        refusal: Callable[[], Awaitable[None]] | None = None
        try:
            with waiting.scope:
                if self.metrics is not None:
                    served = await self.metrics.intercept(stream, key, peer)
                    if served is None:
                        return None  # a /metrics scrape, answered
                    stream = served  # the bytes read so far go first
                ws, request = await start_websocket(
                    nursery, stream, max_message_size=self._max_frame_size
                )
                if request is None:
                    self._refused(key, "closed %s: no valid websocket upgrade", peer)
                    return None
                origin = refused_origin(request.headers, self._origins)
                if origin is not None:
                    self._counters.refused_origin += 1
                    self._refused(key, "refused %s: Origin %r is not allowed", peer, redact(origin))
                    refusal = functools.partial(request.reject, 403, body=_ORIGIN_REFUSED)
                else:
                    await request.accept()
                    conn = _Connection(next(self._ids), ws, peer)
                    refusal = await self._check(conn, key, waiting)
        finally:
            self._room.leave(waiting)
        if refusal is not None:
            await refusal()
            return None
        if not waiting.scope.cancelled_caught:
            return conn
        self._counters.refused_handshakes += 1
        if waiting.evicted:
            self._log.log(
                log,
                logging.WARNING,
                f"evicted:{key}",
                "control: closed %s: it had not said hello and a newer connection needed "
                "the room (unauthenticated sockets from one peer and in all are limited)",
                peer,
            )
            if ws is not None:
                await close_websocket(
                    ws, CLOSE_TRY_AGAIN_LATER, "too many connections waiting", grace=_EVICT_GRACE
                )
            return None
        self._counters.hello_timeouts += 1
        if conn is not None:
            await refuse(
                conn.ws,
                self._counters,
                proto.ErrorCode.HELLO_TIMEOUT,
                f"no hello within {self._hello_timeout:g}s",
                CLOSE_POLICY_VIOLATION,
            )
        return None

    def _refused(self, key: str, message: str, *args: object) -> None:
        self._counters.refused_handshakes += 1
        self._log.log(log, logging.WARNING, f"refused:{key}", "control: " + message, *args)

    def _refusal(
        self,
        conn: _Connection,
        code: str,
        message: str,
        close_code: int,
        *,
        id: proto.MessageId | None = None,
        count_abuse: bool = True,
    ) -> Callable[[], Awaitable[None]]:
        return functools.partial(
            refuse, conn.ws, self._counters, code, message, close_code, id=id,
            count_abuse=count_abuse,
        )  # fmt: skip

    async def _check(
        self, conn: _Connection, key: str, waiting: Waiting
    ) -> Callable[[], Awaitable[None]] | None:
        """Read the hello and decide: ``None`` admits ``conn`` (its role set), anything else
        is the refusal to send."""
        message = await conn.ws.get_message()
        hello = self._parse_hello(message)
        if not isinstance(hello, proto.Hello):
            code, text, msg_id = hello
            self._refused(key, "refused %s: bad first frame (%s)", conn.peer, code)
            close = CLOSE_TOO_BIG if code == proto.ErrorCode.TOO_LARGE else CLOSE_PROTOCOL_ERROR
            return self._refusal(conn, code, text, close, id=msg_id)
        # The hello is in: from here only the throttle can hold the socket (and it is
        # bounded), so the hello deadline no longer applies.
        waiting.scope.deadline = math.inf
        ready_at = self._throttle.ready_at(key)
        if ready_at > trio.current_time():
            # Earlier hellos from this peer failed: this one waits its turn, whatever its
            # token, so a guesser learns nothing sooner by opening more sockets.
            self._counters.throttled_hellos += 1
            await trio.sleep_until(ready_at)
        role = self._role(hello.token)
        client = redact(hello.client)
        guessed = role == VIEWER and hello.token is not None and self._token_digest is not None
        if role is None or guessed:
            self._counters.failed_hellos += 1
            delay = self._throttle.record_failure(key)
            self._log.log(
                log,
                logging.WARNING,
                f"failed-hello:{key}",
                "control: %s (client %r) presented no valid token; its next hello waits %gs",
                conn.peer,
                client,
                delay,
            )
        if role is None:
            self._counters.refused_auth += 1
            self._counters.refused_handshakes += 1
            return self._refusal(
                conn,
                proto.ErrorCode.UNAUTHORIZED,
                "a valid operator token is required",
                CLOSE_POLICY_VIOLATION,
                count_abuse=False,
            )
        if role == VIEWER and self._served() >= self._max_connections:
            self._counters.refused_capacity += 1
            self._refused(
                key, "refused viewer %s: %d connections is the limit", conn.peer,
                self._max_connections,
            )  # fmt: skip
            return self._refusal(
                conn,
                proto.ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server allows {self._max_connections} connections; try again later",
                CLOSE_TRY_AGAIN_LATER,
                count_abuse=False,
            )
        if hello.scope == proto.FLEET and self._fleet_scope is None:
            self._refused(
                key, "refused %s: fleet scope asked of a server without a fleet", conn.peer
            )
            return self._refusal(
                conn,
                proto.ErrorCode.NO_FLEET,
                "this server has no fleet: connect without scope fleet, or to a fleet server "
                "(rakka-trio fleet-serve)",
                CLOSE_POLICY_VIOLATION,
                count_abuse=False,
            )
        conn.role = role
        conn.actor = f"{client}@{conn.peer}"
        if self._fleet_scope == proto.FLEET or hello.scope == proto.FLEET:
            conn.scope = proto.FLEET
        return None

    def _parse_hello(
        self, message: str | bytes
    ) -> proto.Hello | tuple[str, str, proto.MessageId | None]:
        """The hello, or ``(error code, message, id)`` for any other first frame."""
        problem = frame_problem(message, self._max_message_size)
        if problem is not None:
            return (*problem, None)
        assert isinstance(message, str)
        try:
            msg = proto.decode_client_message(message)
        except proto.ProtocolError as exc:
            return exc.code, exc.message, exc.id
        if not isinstance(msg, proto.Hello):
            return (
                proto.ErrorCode.HELLO_REQUIRED,
                'the first frame must be {"type":"hello","token":...,"client":...}',
                msg.id,
            )
        if msg.protocol is not None and msg.protocol != proto.PROTOCOL_VERSION:
            return (
                proto.ErrorCode.UNSUPPORTED_PROTOCOL,
                f"this server speaks protocol {proto.PROTOCOL_VERSION}",
                None,
            )
        return msg

    def _role(self, token: str | None) -> str | None:
        """``"operator"``, ``"viewer"`` or ``None`` (refused)."""
        digest = self._token_digest
        if token is not None and digest is not None and hmac.compare_digest(_digest(token), digest):
            return OPERATOR
        return VIEWER if self._allow_viewers else None


def frame_problem(message: str | bytes, max_message_size: int) -> tuple[str, str] | None:
    """``(error code, message)`` for a frame refused before parsing, else ``None``."""
    if isinstance(message, bytes):
        return proto.ErrorCode.BINARY_FRAME, "binary frames are not accepted; send JSON text"
    if len(message) > max_message_size:
        return (
            proto.ErrorCode.TOO_LARGE,
            f"frame of {len(message)} characters exceeds the limit of {max_message_size}",
        )
    return None
