"""Trio in guest mode on the running asyncio loop (Textual's).

Textual owns the thread and its asyncio loop; the control client is Trio code. Trio's guest
mode (:func:`trio.lowlevel.start_guest_run`) runs a Trio ``main`` *inside* that loop: Trio's
scheduler ticks as asyncio callbacks (``loop.call_soon_threadsafe``) and only its blocking
I/O wait runs in a helper thread. Both sides therefore run on one thread, so Trio code may
call the App's synchronous methods (``post_message``) directly. The other way round, the App
enters Trio through :meth:`TrioGuest.call_soon` (Trio's token, which is thread-safe and puts
the call inside Trio's run context).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    # Trio's own result type (a Trio dependency): only needed for annotations.
    import outcome

__all__ = ["TrioGuest"]


class TrioGuest:
    """One Trio run hosted by the current asyncio loop: :meth:`start` it, :meth:`stop` it
    (cancel and wait). Not reusable."""

    def __init__(self) -> None:
        self._done: asyncio.Future[outcome.Outcome[None]] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._stop_requested = False

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._done is not None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the Trio run has finished."""
        return self._done is not None and not self._done.done()

    @property
    def finished(self) -> asyncio.Future[outcome.Outcome[None]]:
        """Resolves with the Trio run's outcome when it ends (for a done-callback)."""
        if self._done is None:
            raise RuntimeError("the Trio guest run was not started")
        return self._done

    def start(self, main: Callable[[], Awaitable[None]]) -> None:
        """Start running ``main()`` under Trio on the running asyncio loop."""
        if self._done is not None:
            raise RuntimeError("a TrioGuest runs once")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[outcome.Outcome[None]] = loop.create_future()
        self._done = done

        def resolve(result: outcome.Outcome[None]) -> None:
            # Trio calls this from the host loop's thread once the run is over.
            if not done.done():
                done.set_result(result)

        trio.lowlevel.start_guest_run(
            self._main,
            main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=resolve,
            # asyncio owns signal.set_wakeup_fd (its SIGINT handling); Trio must not take it.
            host_uses_signal_set_wakeup_fd=True,
        )

    async def _main(self, main: Callable[[], Awaitable[None]]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stop_requested:
                # stop() came before Trio's first tick: never start the work.
                scope.cancel()
            await main()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` inside Trio's run (so it may call ``nursery.start_soon`` and
        other Trio APIs). Thread-safe. Returns ``False`` if the run is not (or no longer)
        accepting calls, in which case ``fn`` is not called."""
        token = self._token
        if token is None or not self.running:
            return False
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    async def stop(self) -> outcome.Outcome[None] | None:
        """Cancel the Trio run and wait until it has finished; its outcome (``None`` if it
        was never started). The caller decides what an error outcome means."""
        if self._done is None:
            return None
        if not self._done.done():
            self._stop_requested = True
            scope = self._scope
            if scope is not None and self._token is not None:
                # RunFinishedError: it is finishing on its own; the future resolves soon.
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(scope.cancel)
        return await self._done
