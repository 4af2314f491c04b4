"""Per-connection pieces of the control server: statistics, rate buckets, peers, tokens."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from typing import Final

import attrs
import trio
import trio_websocket
from trio_websocket import WebSocketConnection

_REPLY_BUFFER: Final = 16  # answers waiting to be written; a full queue pauses the reader
_HARD_LIMIT_FACTOR: Final = 4  # frames up to 4x max_message_size get an error, larger a close
_CLOSE_TIMEOUT: Final = 2.0  # how long a closing handshake may take before we just hang up
_ENCODE_CACHE: Final = 32  # events encoded once and shared by every connection

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
    connections_total: int
    """Websocket connections accepted since start (including refused ones)."""
    refused_auth: int
    """Connections closed because they had no valid token and viewers are not allowed."""
    refused_capacity: int
    """Connections turned away because ``max_connections`` was reached."""
    closed_for_abuse: int
    """Connections closed for floods, bad hellos, oversize frames or not reading."""
    commands: int
    """Operator commands carried out."""
    errors_sent: int
    """``error`` frames sent."""
    events_dropped: int
    """Events dropped for lagging connections (reported to them as ``lagged``)."""


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
        self.actor = f"?@{peer}"
        self.strikes = 0  # frames refused by the rate limit since it last admitted one
        self.wake: trio.CancelScope | None = None  # set while the writer waits for events


def _peer(remote: object) -> str:
    if isinstance(remote, trio_websocket.Endpoint):
        if remote.address.version == 6:
            return f"[{remote.address}]:{remote.port}"
        return f"{remote.address}:{remote.port}"
    return str(remote)


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
