"""The recent history of a supervisor: its last transitions and operator commands.

A console that connects in the middle of an incident should see at once what happened before
it came: the control server sends this history in its ``welcome``. The supervisor's event bus
records every :class:`~rakka_trio.Transition` and :class:`~rakka_trio.Command` it publishes
in a bounded ring (constant memory, O(1) per event), whoever published it.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ._events import Command, Event, EventBus, Transition

__all__ = ["HISTORY_SIZE", "EventHistory", "RecordingBus"]

HISTORY_SIZE: Final = 200
"""Transitions and commands kept (the most recent ones)."""


class EventHistory:
    """The last ``size`` transitions and commands, oldest first."""

    __slots__ = ("_events",)

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self._events: deque[Transition | Command] = deque(maxlen=size)

    def record(self, event: Event) -> None:
        """Keep ``event`` if it is a transition or a command (the oldest one goes when full)."""
        if isinstance(event, Transition | Command):
            self._events.append(event)

    def events(self) -> tuple[Transition | Command, ...]:
        """What is kept, oldest first."""
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)


class RecordingBus(EventBus):
    """An :class:`~rakka_trio._events.EventBus` that also keeps an :class:`EventHistory`."""

    def __init__(self, default_buffer: int, history: EventHistory | None = None) -> None:
        super().__init__(default_buffer)
        self.history = history if history is not None else EventHistory()

    def publish(self, event: Event) -> None:
        """Record ``event`` in the history, then deliver it like any bus."""
        self.history.record(event)
        super().publish(event)
