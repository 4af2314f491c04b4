"""Limits the control server applies before a client has proved who it is (used by
:mod:`._admission`), and a rate limit for its log lines.

* :class:`WaitingRoom` holds the sockets that have not sent a valid ``hello`` yet. They are
  limited per peer address and in total; a newcomer over a limit closes the *oldest* waiting
  socket (a real client says hello within a round trip, so the longest-waiting socket is the
  likeliest squatter), which is how an operator always gets a chance to present the token.
* :class:`HelloThrottle` makes each failed ``hello`` from a peer delay that peer's next one,
  doubling up to a cap, so guessing the token runs at a few attempts per second, not
  thousands.
* :class:`LogLimiter` keeps a hostile peer from flooding the log: one line per key per
  interval, with the number of lines held back reported on the next one.
* :func:`refused_origin` applies the ``Origin`` policy that keeps web pages out.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

import trio

# Failed hellos: the first delays the peer's next hello by this much, each further one doubles
# it, up to the cap; a peer with no failure for FORGET_AFTER starts over.
THROTTLE_FIRST_DELAY: Final = 0.05
THROTTLE_MAX_DELAY: Final = 2.0
THROTTLE_FORGET_AFTER: Final = 60.0
_MAX_TRACKED_PEERS: Final = 4096  # peers remembered by the throttle and the log limiter
_MAX_ORIGIN_LENGTH: Final = 512


def peer_key(address: str) -> str:
    """The unit that per-peer limits count: the IPv4 address, or the IPv6 /64 (one host
    usually holds a whole /64, so counting single IPv6 addresses would not limit anyone)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class Waiting:
    """One socket in the :class:`WaitingRoom`. ``scope`` covers everything the connection
    does before it is admitted; cancelling it (``evicted`` set) makes room for a newcomer."""

    __slots__ = ("evicted", "key", "scope")

    def __init__(self, key: str, deadline: float) -> None:
        self.key = key
        self.scope = trio.CancelScope(deadline=deadline)
        self.evicted = False


class WaitingRoom:
    """Sockets that have not said a valid ``hello`` yet: at most ``per_peer`` from one peer
    and ``limit`` in all. Over either limit a newcomer closes the oldest waiting socket (of
    that peer, or overall), never itself: it may be the operator."""

    def __init__(self, *, limit: int, per_peer: int) -> None:
        self._limit = limit
        self._per_peer = per_peer
        self._all: dict[Waiting, None] = {}  # insertion-ordered: oldest first
        self._by_peer: dict[str, dict[Waiting, None]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._all)

    def enter(self, key: str, deadline: float) -> Waiting:
        """Register a new socket from peer ``key`` (see :func:`peer_key`), evicting the
        oldest waiting one where a limit would be exceeded."""
        same_peer = self._by_peer.get(key)
        if same_peer is not None and len(same_peer) >= self._per_peer:
            self._evict(next(iter(same_peer)))
        elif len(self._all) >= self._limit:
            self._evict(next(iter(self._all)))
        waiting = Waiting(key, deadline)
        self._all[waiting] = None
        self._by_peer.setdefault(key, {})[waiting] = None
        return waiting

    def leave(self, waiting: Waiting) -> None:
        """The socket was admitted, refused or has gone (idempotent)."""
        if waiting in self._all:
            del self._all[waiting]
            same_peer = self._by_peer[waiting.key]
            del same_peer[waiting]
            if not same_peer:
                del self._by_peer[waiting.key]

    def _evict(self, victim: Waiting) -> None:
        self.leave(victim)
        victim.evicted = True
        victim.scope.cancel()
        self.evicted += 1


class HelloThrottle:
    """Per peer: each failed hello delays the peer's next hello (doubling up to a cap)."""

    def __init__(
        self,
        *,
        first_delay: float = THROTTLE_FIRST_DELAY,
        max_delay: float = THROTTLE_MAX_DELAY,
        forget_after: float = THROTTLE_FORGET_AFTER,
        max_peers: int = _MAX_TRACKED_PEERS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._first = first_delay
        self._max = max_delay
        self._forget_after = forget_after
        self._max_peers = max_peers
        self._clock = clock
        # peer -> (consecutive failures, time of the last one, earliest next hello)
        self._peers: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def ready_at(self, key: str) -> float:
        """When the next hello from ``key`` may be checked (``-inf``: at once)."""
        entry = self._peers.get(key)
        if entry is None or self._clock() - entry[1] > self._forget_after:
            return -math.inf
        return entry[2]

    def record_failure(self, key: str) -> float:
        """Count a failed hello from ``key``; returns the delay its next hello will wait."""
        now = self._clock()
        failures, last, _ = self._peers.pop(key, (0, now, now))
        if now - last > self._forget_after:
            failures = 0
        failures += 1
        delay = min(self._max, self._first * 2.0 ** min(failures - 1, 32))
        self._peers[key] = (failures, now, now + delay)
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)
        return delay


class LogLimiter:
    """At most one log line per key per ``interval``; the lines held back are counted."""

    def __init__(
        self,
        interval: float,
        *,
        max_keys: int = _MAX_TRACKED_PEERS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last, held)

    def check(self, key: str) -> int | None:
        """``None``: stay quiet (counted). Otherwise log now, mentioning the returned number
        of lines held back since the last one for this key."""
        now = self._clock()
        last, held = self._keys.pop(key, (-math.inf, 0))
        if now - last >= self._interval:
            self._keys[key] = (now, 0)
            result: int | None = held
        else:
            self._keys[key] = (last, held + 1)
            result = None
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return result

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """``logger.log(level, message, *args)`` unless ``key`` logged within the interval;
        the next line that goes out says how many were held back."""
        held = self.check(key)
        if held is None:
            return
        if held:
            message += " (%d similar suppressed)"
            args = (*args, held)
        logger.log(level, message, *args, exc_info=exc_info)


def normalize_origins(allowed: Iterable[str] | None) -> frozenset[str]:
    """Validate ``serve_control(allowed_origins=...)``; the lowercase origins (``"*"`` for
    any). Raises :class:`TypeError`/:class:`ValueError` with a readable message."""
    if allowed is None:
        return frozenset()
    if isinstance(allowed, str | bytes):
        raise TypeError(
            "allowed_origins must be a collection of origins such as "
            "['https://ops.example.com'], not a single string"
        )
    result: set[str] = set()
    for origin in allowed:
        if not isinstance(origin, str):
            raise TypeError(f"allowed_origins entries must be strings, got {type(origin).__name__}")
        cleaned = origin.strip().lower().rstrip("/")
        if cleaned != "*" and (
            "://" not in cleaned
            or not cleaned.isprintable()
            or any(c.isspace() for c in cleaned)
            or len(cleaned) > _MAX_ORIGIN_LENGTH
        ):
            raise ValueError(
                f"allowed_origins: {origin!r} is not an origin like 'https://host[:port]' or '*'"
            )
        result.add(cleaned)
    return frozenset(result)


def refused_origin(headers: Iterable[tuple[bytes, bytes]], allowed: frozenset[str]) -> str | None:
    """The origin to refuse, or ``None`` when the handshake may go on.

    Browsers always send ``Origin`` on a websocket handshake, and a page can open one to any
    address, loopback included. Other clients (the CLI, scripts, the TUI) send none, so a
    missing ``Origin`` is allowed; a present one must be listed in ``allowed``.
    """
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins or "*" in allowed:
        return None
    for raw in origins:
        origin = raw.decode("latin-1").strip().lower().rstrip("/")
        if origin not in allowed:
            return origin[:_MAX_ORIGIN_LENGTH]
    return None
