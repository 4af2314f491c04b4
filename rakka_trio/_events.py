"""Events and their bounded fan-out to subscribers.

Publishing is synchronous and never blocks: each subscriber has a bounded queue; when it is
full the oldest event is dropped and the subscriber later receives one :class:`Lagged` marker
saying how many it lost. A slow subscriber therefore never delays a breaker or a request.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import attrs
import trio

__all__ = [
    "BreakerState",
    "Command",
    "EndpointAdded",
    "EndpointRemoved",
    "Event",
    "EventBus",
    "Lagged",
    "ProbeLimitReached",
    "Stats",
    "Subscription",
    "TaskRestarted",
    "Transition",
]


class BreakerState(enum.Enum):
    """The state of one endpoint's circuit breaker."""

    CLOSED = "closed"
    """Calls flow; outcomes are counted."""
    OPEN = "open"
    """Tripped: calls fail fast until the open duration ends."""
    HALF_OPEN = "half_open"
    """Trial: a bounded number of probe calls decide between CLOSED and OPEN."""
    FORCED_OPEN = "forced_open"
    """Held open by an operator until its expiry or a reset."""
    DISABLED = "disabled"
    """Breaker bypassed by an operator: always passes, still counts."""

    def __str__(self) -> str:
        return self.value


def _wall() -> float:
    return time.time()


@attrs.frozen(kw_only=True)
class Event:
    """Base of everything :meth:`Supervisor.subscribe` delivers.

    ``at`` is the Trio clock time of the event, ``wall`` the Unix time.
    """

    at: float
    wall: float = attrs.field(factory=_wall)


@attrs.frozen(kw_only=True)
class Transition(Event):
    """A breaker changed state (or an operator re-applied a state).

    ``cause`` is one of ``failure_threshold``, ``failure_rate``, ``slow_call_rate``,
    ``probe_failed``, ``probe_succeeded``, ``timer``, ``forced``, ``disabled``, ``reset``.
    The counts are those that led to the transition. ``open_until`` is the Trio time the
    new state ends (``math.inf`` for forced without expiry, ``None`` when it has no timer).
    """

    endpoint: str
    from_state: BreakerState
    to_state: BreakerState
    cause: str
    consecutive_failures: int
    failure_rate: float | None
    calls_in_window: int
    trips: int
    open_until: float | None = None
    actor: str | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class ProbeLimitReached(Event):
    """A half-open breaker turned a call away because all its probe permits are taken.

    Emitted once per half-open period (not per rejected call) so a flood stays quiet.
    """

    endpoint: str
    probes_in_flight: int


@attrs.frozen(kw_only=True)
class Command(Event):
    """Audit record of an operator command (``force_open``, ``reset``, ``disable``)."""

    endpoint: str
    command: str
    actor: str
    reason: str | None = None
    duration: float | None = None


@attrs.frozen(kw_only=True)
class Stats(Event):
    """Periodic snapshot (about once per ``stats_interval``) of every endpoint."""

    statistics: Any  # SupervisorStatistics; typed loosely to avoid an import cycle


@attrs.frozen(kw_only=True)
class Lagged(Event):
    """This subscriber was too slow: ``dropped`` older events were discarded."""

    dropped: int


@attrs.frozen(kw_only=True)
class EndpointAdded(Event):
    """An endpoint was registered with the supervisor."""

    endpoint: str


@attrs.frozen(kw_only=True)
class EndpointRemoved(Event):
    """An endpoint was removed from the supervisor."""

    endpoint: str


@attrs.frozen(kw_only=True)
class TaskRestarted(Event):
    """A supervised task crashed and is being restarted after ``backoff`` seconds."""

    task: str
    error: str
    crashes: int
    backoff: float


class Subscription:
    """A live event stream: ``async for event in subscription``.

    Obtained from :meth:`Supervisor.subscribe`. Ends (iteration stops) when the supervisor
    shuts down or the subscription is closed.
    """

    def __init__(self, bus: EventBus, buffer: int, stats: bool) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque()
        self._buffer = buffer
        self._stats = stats
        self._dropped = 0
        self._dropped_total = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    def _push(self, event: Event) -> None:
        if len(self._queue) >= self._buffer:
            self._queue.popleft()
            self._dropped += 1
            self._dropped_total += 1
        self._queue.append(event)
        if self._lot:
            self._lot.unpark_all()

    @property
    def dropped(self) -> int:
        """Total events this subscriber lost to lag."""
        return self._dropped_total

    def receive_nowait(self) -> Event:
        """Return the next event, :class:`Lagged` first if events were dropped.

        Raises :class:`trio.WouldBlock` when none is waiting and :class:`trio.EndOfChannel`
        once closed and drained.
        """
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return Lagged(at=trio.current_time(), dropped=dropped)
        if self._queue:
            return self._queue.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event:
        """Wait for the next event. Raises :class:`trio.EndOfChannel` once closed and drained."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            event = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return event
        while True:
            await self._lot.park()
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                continue

    def close(self) -> None:
        """Stop receiving; pending events are still delivered, then iteration ends."""
        if not self._closed:
            self._closed = True
            self._bus._subscribers.discard(self)
            self._lot.unpark_all()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """Synchronous, non-blocking fan-out of events to bounded subscriber queues."""

    def __init__(self, default_buffer: int) -> None:
        self._default_buffer = default_buffer
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.published = 0

    def subscribe(self, *, buffer: int | None = None, stats: bool = True) -> Subscription:
        """Register a new subscriber with a queue of ``buffer`` events."""
        size = self._default_buffer if buffer is None else buffer
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"buffer must be a positive integer, got {size!r}")
        sub = Subscription(self, size, stats)
        if self._closed:
            sub._closed = True
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        """Number of open subscriptions."""
        return len(self._subscribers)

    @property
    def wants_stats(self) -> bool:
        """True when at least one subscriber asked for :class:`Stats` events."""
        return any(s._stats for s in self._subscribers)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber without blocking."""
        self.published += 1
        if isinstance(event, Stats):
            for sub in self._subscribers:
                if sub._stats:
                    sub._push(event)
        else:
            for sub in self._subscribers:
                sub._push(event)

    def close(self) -> None:
        """End every subscription (after it drains what it already has)."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()


def frozen_mapping(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a fresh copy of ``data`` (for frozen statistics objects)."""
    from types import MappingProxyType

    return MappingProxyType(dict(data))
