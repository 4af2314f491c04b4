"""Per-connection pieces of the control server: statistics, rate buckets, tokens."""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable
from typing import Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .._redact import redact
from . import _protocol as proto

_REPLY_BUFFER: Final = 16  # answers waiting to be written; a full queue pauses the reader
_HARD_LIMIT_FACTOR: Final = 4  # frames up to 4x max_message_size get an error, larger a close
_CLOSE_TIMEOUT: Final = 2.0  # how long a closing handshake may take before we just hang up
_ENCODE_CACHE: Final = 32  # events encoded once and shared by every connection
_EVICT_GRACE: Final = 0.1  # an evicted socket gets its close frame, not a wait for the reply
_LOG_INTERVAL: Final = 30.0  # at most one log line per peer (or per kind) this often
_STATS_BATCH: Final = 8  # connections handed a stats frame at once
_STATS_SPREAD: Final = 0.5  # share of stats_interval over which the batches are spread
_STATS_SPREAD_MAX: Final = 0.25  # ... but never longer than this many seconds

# Websocket close codes (RFC 6455 §7.4.1).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013

OPERATOR: Final = "operator"
VIEWER: Final = "viewer"


@attrs.frozen(kw_only=True)
class ControlServerStatistics:
    """Counters of one control server (:meth:`ControlServer.statistics`)."""

    active_connections: int
    """Connections that said hello and are being served now."""
    operators: int
    """Of those, connections holding the operator token."""
    viewers: int
    """Of those, read-only connections."""
    unauthenticated: int
    """Sockets connected now that have not been admitted yet (no valid hello so far)."""
    connections_total: int
    """TCP connections accepted since start (including refused ones)."""
    refused_handshakes: int
    """Connections closed before they were admitted, for any reason: a refused ``Origin``,
    evicted while waiting, no hello in time, a bad first frame, no valid token, or the
    connection cap. The fields below break most of it down."""
    refused_origin: int
    """Websocket upgrades refused (HTTP 403) because of a browser ``Origin`` not allowed."""
    evicted_unauthenticated: int
    """Sockets that had not said hello, closed to make room for a newer one (the per-peer
    or the total limit of unauthenticated sockets)."""
    hello_timeouts: int
    """Connections that did not complete the upgrade and the ``hello`` in ``hello_timeout``."""
    failed_hellos: int
    """Hellos with a wrong token (or none where viewers are not allowed); each one delays
    the next hello from the same peer."""
    throttled_hellos: int
    """Hellos that had to wait because of earlier failures from the same peer."""
    refused_auth: int
    """Connections closed because they had no valid token and viewers are not allowed."""
    refused_capacity: int
    """Viewers turned away because ``max_connections`` was reached (operators never are)."""
    closed_for_abuse: int
    """Connections closed for floods, bad hellos, oversize frames or not reading."""
    connection_errors: int
    """Connections ended by an error inside the connection (a websocket protocol error, a
    network failure, a bug): each closed that connection only."""
    commands: int
    """Operator commands carried out."""
    errors_sent: int
    """``error`` frames sent."""
    events_dropped: int
    """Events dropped for lagging connections (reported to them as ``lagged``)."""
    stats_broadcasts: int
    """Stats frames built (each encoded once and shared by every connection)."""


class _Counters:
    """The server's mutable counters, shared by admission and serving (internal)."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.refused_handshakes = 0
        self.refused_origin = 0
        self.hello_timeouts = 0
        self.failed_hellos = 0
        self.throttled_hellos = 0
        self.refused_auth = 0
        self.refused_capacity = 0
        self.closed_for_abuse = 0
        self.connection_errors = 0
        self.commands = 0
        self.errors_sent = 0
        self.events_dropped = 0
        self.stats_broadcasts = 0


class _TokenBucket:
    """Continuous refill at ``rate`` per second, holding at most ``burst`` tokens."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = trio.current_time):
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token if there is one; ``False`` means "over the limit"."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _SlowClient(Exception):
    """A send did not complete within ``send_timeout``: the client has stopped reading."""


class _Connection:
    """Per-connection state (internal)."""

    def __init__(self, conn_id: int, ws: WebSocketConnection, peer: str) -> None:
        self.id = conn_id
        self.ws = ws
        self.peer = peer
        self.role: str | None = None
        self.scope = "node"  # what the connection watches: "node" or "fleet" (from its hello)
        self.actor = f"?@{peer}"
        self.strikes = 0  # frames refused by the rate limit since it last admitted one
        self.wake: trio.CancelScope | None = None  # set while the writer waits for events
        # The newest stats frame not yet sent: (snapshot time, encoded text). A slot, not a
        # queue: a client that falls behind skips to the newest stats.
        self.stats: tuple[float, str] | None = None
        self.state_at = -math.inf  # time of the newest state change sent (see _send_stats)

    def offer_stats(self, at: float, text: str) -> None:
        """Hand the writer a stats frame (replacing an unsent older one) and wake it."""
        self.stats = (at, text)
        if self.wake is not None:
            self.wake.cancel()


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(token: str) -> bytes:
    # Hashing first makes the comparison independent of the token's length as well as its
    # content; surrogatepass because JSON can carry lone surrogates.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def error_frame(msg_id: proto.MessageId | None, code: str, message: str) -> proto.ErrorFrame:
    """An ``error`` frame; the message passes through the secret redactor."""
    return proto.ErrorFrame(id=msg_id, code=code, message=redact(message))


async def close_websocket(
    ws: WebSocketConnection, code: int, reason: str, *, grace: float = _CLOSE_TIMEOUT
) -> None:
    """Close the websocket, waiting at most ``grace`` seconds for the closing handshake
    (the TCP connection is closed either way). Shielded: it also runs while the
    connection's tasks are being cancelled."""
    with trio.move_on_after(grace) as scope:
        scope.shield = True
        await ws.aclose(code, reason)


async def refuse(
    ws: WebSocketConnection,
    counters: _Counters,
    code: str,
    message: str,
    close_code: int,
    *,
    id: proto.MessageId | None = None,
    count_abuse: bool = True,
) -> None:
    """Send one ``error`` frame, then close; both bounded in time."""
    if count_abuse:
        counters.closed_for_abuse += 1
    counters.errors_sent += 1
    frame = error_frame(id, code, message)
    with trio.move_on_after(_CLOSE_TIMEOUT):
        try:
            await ws.send_message(proto.encode(frame))
        except ConnectionClosed:
            return
    await close_websocket(ws, close_code, code)
