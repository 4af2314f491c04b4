"""Graceful shutdown on SIGTERM and SIGINT for applications that embed a supervisor.

Without it, Ctrl-C raises :class:`KeyboardInterrupt` wherever the program happens to be (Trio
then reports it inside an exception group), and SIGTERM — what ``docker stop``, systemd and
Kubernetes send — kills the process outright: no ``finally`` runs, a Redis-mode node stays
registered in the shared limits until ``node_ttl`` runs out, and the budget it had leased is
lost until then. :func:`shutdown_on_signals` turns those signals into ordinary Trio
cancellation, so every ``async with`` unwinds (the supervisor gives its lease back and leaves
the fleet) and the program can exit with the conventional status (130, 143).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from signal import Signals

import trio

__all__ = ["SignalShutdown", "shutdown_on_signals"]

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalShutdown:
    """What :func:`shutdown_on_signals` saw: the first signal that asked for a shutdown."""

    __slots__ = ("_received", "_signal", "_signals_seen")

    def __init__(self) -> None:
        self._signal: Signals | None = None
        self._signals_seen = 0
        self._received = trio.Event()

    @property
    def signal(self) -> Signals | None:
        """The first signal received (``None`` while none has arrived)."""
        return self._signal

    @property
    def requested(self) -> bool:
        """True once a signal asked for a shutdown."""
        return self._signal is not None

    @property
    def signals_seen(self) -> int:
        """How many of the watched signals arrived (the ones after the first are absorbed)."""
        return self._signals_seen

    @property
    def exit_code(self) -> int | None:
        """The conventional exit status for the signal: 128 + its number (130 for SIGINT, 143
        for SIGTERM); ``None`` when no signal arrived."""
        return None if self._signal is None else 128 + int(self._signal)

    async def wait(self) -> Signals:
        """Wait until a signal asks for a shutdown; the signal."""
        await self._received.wait()
        assert self._signal is not None
        return self._signal

    def _record(self, signum: int) -> bool:
        self._signals_seen += 1
        if self._signal is not None:
            return False
        self._signal = Signals(signum)
        self._received.set()
        return True

    def __repr__(self) -> str:
        name = self._signal.name if self._signal is not None else None
        return f"<SignalShutdown signal={name} seen={self._signals_seen}>"


@asynccontextmanager
async def shutdown_on_signals(*signals: int, cancel: bool = True) -> AsyncIterator[SignalShutdown]:
    """Turn SIGINT and SIGTERM (or the ``signals`` given) into a graceful shutdown of the
    block::

        async def main() -> int:
            async with rk.shutdown_on_signals() as shutdown:
                async with rk.open_supervisor(cfg) as sup:
                    await serve(sup)  # runs until a signal arrives
            return shutdown.exit_code or 0

        sys.exit(trio.run(main))

    On the first signal the block is cancelled (``cancel=False``: nothing is cancelled; wait
    on :meth:`SignalShutdown.wait` or poll :attr:`SignalShutdown.requested` and stop on your
    own terms). The cancellation ends at the end of the block; the supervisor's own exit then
    runs as usual: its shielded cleanups have deadlines, so the shutdown is bounded. Signals
    that arrive after the first are absorbed while the block unwinds (use SIGKILL to stop a
    process that must not wait). When the block ends the previous signal handlers are back.

    Must be entered from the main thread (a Python rule for signal handlers). The
    :class:`SignalShutdown` says which signal arrived and the exit status that goes with it.
    """
    wanted = signals or DEFAULT_SIGNALS
    shutdown = SignalShutdown()
    with trio.open_signal_receiver(*wanted) as received:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as body:

                async def watch() -> None:
                    async for signum in received:
                        if shutdown._record(signum) and cancel:
                            body.cancel()

                nursery.start_soon(watch)
                try:
                    yield shutdown
                finally:
                    nursery.cancel_scope.cancel()
