"""Limiter events and the frozen statistics snapshots."""

from __future__ import annotations

import attrs

from .._events import Event

# --- events -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LimiterPaused(Event):
    """A key stopped admitting until ``until`` (Trio clock) after a provider 429.

    ``key`` is ``provider:server:fingerprint:family`` (never the credential); ``endpoint`` is the
    endpoint that observed it (``None`` when the pause came from another node through Redis);
    ``cause`` is ``retry_after``, ``reset`` (from rate-limit headers), ``default`` (a 429
    without hints) or ``shared``.
    """

    key: str
    endpoint: str | None
    until: float
    cause: str


@attrs.frozen(kw_only=True)
class LimiterFallback(Event):
    """Shared limits lost (``active=True``) or regained (``active=False``) their Redis.

    While active each shared key follows its ``redis_failure_policy``; ``error`` says what
    failed (credentials scrubbed).
    """

    active: bool
    error: str | None = None


@attrs.frozen(kw_only=True)
class LimiterStateLost(Event):
    """Redis no longer had a shared key's state (restart or eviction): it was re-created
    conservatively (empty, refilling from now) and this node re-registered."""

    key: str


# --- statistics -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LimitStatistics:
    """One limit of a key: ``limit`` per minute as configured, ``effective_limit`` after
    adaptive lowering, ``burst``, what is ``available`` now (negative while a debt is repaid),
    and ``utilisation`` (``1 - available/burst``, clipped to 0..1)."""

    name: str
    limit: int
    effective_limit: int
    burst: int
    available: float
    utilisation: float


@attrs.frozen(kw_only=True)
class KeyStatistics:
    """A snapshot of one limit key (``provider:server:fingerprint:family``).

    Counters: ``admitted`` admissions, ``waited`` of them after waiting in line, ``rejected``
    refusals (``try_acquire`` or ``max_wait``), ``cancelled`` waiters, ``pauses`` after 429s,
    ``state_resets`` (lost Redis state detected), ``redis_round_trips``. ``fallback`` is true
    while Redis is unavailable and the failure policy is in effect; ``members`` is the number of
    live nodes sharing the key (distributed modes). ``utilisation`` is the highest of its limits'.
    """

    key: str
    mode: str
    limits: tuple[LimitStatistics, ...]
    max_concurrent: int | None
    in_flight: int
    waiters: int
    paused_until: float | None
    utilisation: float
    admitted: int
    waited: int
    rejected: int
    cancelled: int
    pauses: int
    fallback: bool = False
    members: int | None = None
    state_resets: int = 0
    redis_round_trips: int = 0


@attrs.frozen(kw_only=True)
class LimiterStatistics:
    """A snapshot of one endpoint's limiter (:meth:`LimiterHandle.statistics`).

    ``keys`` are the keys this endpoint has used; the totals are over them. ``utilisation`` is
    the highest of any key's (0 when no key was used yet). ``redis_healthy`` is ``None`` in
    local mode.
    """

    endpoint: str
    mode: str
    keys: tuple[KeyStatistics, ...]
    utilisation: float
    waiters: int
    in_flight: int
    paused: bool
    fallback: bool
    redis_healthy: bool | None
