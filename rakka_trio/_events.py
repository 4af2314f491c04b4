"""Events and their bounded fan-out to subscribers.

Publishing is synchronous and never blocks: each subscriber has a bounded queue; when it is
full the oldest event is dropped and the subscriber later receives one :class:`Lagged` marker
saying how many it lost. A slow subscriber therefore never delays a breaker or a request.
That queue, :class:`DropOldestQueue`, is also what the control client buffers frames in.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio

__all__ = [
    "BreakerState",
    "Command",
    "DropOldestQueue",
    "EndpointAdded",
    "EndpointRemoved",
    "Event",
    "EventBus",
    "Lagged",
    "OpenSubscription",
    "ProbeLimitReached",
    "Stats",
    "Subscription",
    "TaskRestarted",
    "Transition",
]

T = TypeVar("T")


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
    """Base of everything :meth:`Supervisor.open_subscription` delivers.

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


class DropOldestQueue(trio.abc.ReceiveChannel[T]):
    """A bounded queue whose producer never blocks: when it is full the oldest item is dropped,
    and the consumer later receives one lag marker, ``lagged(n)``, saying how many it lost.

    The producer calls :meth:`push` (synchronous) and :meth:`close` (the stream ends once the
    consumer has drained what is queued: :class:`trio.EndOfChannel`). The consumer has Trio's
    receive-channel interface: ``async for``, :meth:`receive`, :meth:`receive_nowait` and
    :meth:`aclose` (after which receiving raises :class:`trio.ClosedResourceError`).
    """

    def __init__(self, capacity: int, lagged: Callable[[int], T]) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"buffer must be a positive integer, got {capacity!r}")
        self._queue: deque[T] = deque()
        self._capacity = capacity
        self._lagged = lagged
        self._pending_drops = 0
        self._dropped = 0
        self._ended = False  # the producer closed: deliver what is queued, then EndOfChannel
        self._receiver_closed = False
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def capacity(self) -> int:
        """How many items are kept before the oldest is dropped."""
        return self._capacity

    @property
    def dropped(self) -> int:
        """Total items dropped because the consumer fell behind."""
        return self._dropped

    def push(self, item: T) -> None:
        """Queue ``item`` without blocking (dropping the oldest when full); ignored once the
        stream has ended."""
        if self._ended:
            return
        queue = self._queue
        if len(queue) >= self._capacity:
            queue.popleft()
            self._pending_drops += 1
            self._dropped += 1
        queue.append(item)
        if self._lot:
            self._lot.unpark_all()

    def close(self) -> None:
        """End the stream (producer side): queued items are still delivered, then
        :class:`trio.EndOfChannel`."""
        self._ended = True
        self._lot.unpark_all()

    def receive_nowait(self) -> T:
        """The next item, the lag marker first if items were dropped.

        Raises :class:`trio.WouldBlock` when none is waiting, :class:`trio.EndOfChannel` once
        the stream ended and was drained, :class:`trio.ClosedResourceError` after
        :meth:`aclose`.
        """
        if self._receiver_closed:
            raise trio.ClosedResourceError("this receiver was closed")
        if self._pending_drops:
            dropped, self._pending_drops = self._pending_drops, 0
            return self._lagged(dropped)
        if self._queue:
            return self._queue.popleft()
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        """Wait for the next item (see :meth:`receive_nowait` for the end of the stream)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        while True:
            await self._lot.park()
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                continue

    def close_receiver(self) -> None:
        """Stop receiving at once (synchronous :meth:`aclose`); queued items are discarded."""
        self._receiver_closed = self._ended = True
        self._queue.clear()
        self._pending_drops = 0
        self._lot.unpark_all()

    async def aclose(self) -> None:
        """Stop receiving; queued items are discarded."""
        self.close_receiver()
        await trio.lowlevel.checkpoint()


class Subscription(DropOldestQueue[Event]):
    """A live event stream: ``async for event in subscription``.

    Yielded by :meth:`Supervisor.open_subscription`, which ends it when its ``async with``
    block exits. Iteration stops when the supervisor shuts down. When this subscriber falls
    more than its buffer behind, the oldest events are dropped and a :class:`Lagged` marker
    says how many.
    """

    def __init__(self, bus: EventBus, buffer: int, stats: bool) -> None:
        super().__init__(buffer, _lagged)
        self._bus = bus
        self.wants_stats = stats

    def close(self) -> None:
        """Unsubscribe; events already queued are still delivered, then iteration ends."""
        self._bus._discard(self)
        super().close()

    def close_receiver(self) -> None:
        """Unsubscribe at once; queued events are discarded."""
        self._bus._discard(self)
        super().close_receiver()


def _lagged(dropped: int) -> Lagged:
    return Lagged(at=trio.current_time(), dropped=dropped)


class OpenSubscription:
    """``async with bus.open_subscription() as events:`` — subscribes on entry and
    unsubscribes on exit, so a subscription cannot outlive its block."""

    __slots__ = ("_buffer", "_bus", "_stats", "_subscription")

    def __init__(self, bus: EventBus, buffer: int, stats: bool) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be a positive integer, got {buffer!r}")
        self._bus = bus
        self._buffer = buffer
        self._stats = stats
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        if self._subscription is not None:
            raise RuntimeError("this subscription context was already entered")
        self._subscription = self._bus._register(self._buffer, self._stats)
        return self._subscription

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._subscription is not None
        self._subscription.close_receiver()


class EventBus:
    """Synchronous, non-blocking fan-out of events to bounded subscriber queues."""

    def __init__(self, default_buffer: int) -> None:
        self._default_buffer = default_buffer
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.published = 0

    def open_subscription(
        self, *, buffer: int | None = None, stats: bool = True
    ) -> OpenSubscription:
        """A subscription of ``buffer`` events, registered for the ``async with`` block."""
        return OpenSubscription(self, self._default_buffer if buffer is None else buffer, stats)

    def _register(self, buffer: int, stats: bool) -> Subscription:
        sub = Subscription(self, buffer, stats)
        if self._closed:
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    def _discard(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        """Number of open subscriptions."""
        return len(self._subscribers)

    @property
    def wants_stats(self) -> bool:
        """True when at least one subscriber asked for :class:`Stats` events."""
        return any(s.wants_stats for s in self._subscribers)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber without blocking."""
        self.published += 1
        if isinstance(event, Stats):
            for sub in self._subscribers:
                if sub.wants_stats:
                    sub.push(event)
        else:
            for sub in self._subscribers:
                sub.push(event)

    def close(self) -> None:
        """End every subscription (after it drains what it already has)."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()


def frozen_mapping(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a fresh copy of ``data`` (for frozen statistics objects)."""
    from types import MappingProxyType

    return MappingProxyType(dict(data))
