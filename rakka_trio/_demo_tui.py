"""``rakka-trio demo --tui``: the demo in a worker thread, the operator console in this one."""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import time
from collections.abc import Callable

import trio
from rich.console import Console

from ._control import ControlServer
from ._demo import DemoReport, demo_main, exit_status
from ._demo_shared import say
from ._supervisor import Supervisor

__all__ = ["run_with_tui"]


def run_with_tui(
    *,
    duration: float,
    seed: int,
    concurrency: int,
    redis_url: str | None,
    console: Console,
    fleet: str | None = None,
) -> int:
    """The demo in a worker thread (its own Trio run) and the TUI in this one, attached to the
    demo's control server. The demo's own output is kept until the TUI closes, then printed.
    The TUI closes by itself when the demo ends (rather than reconnect to a server that is
    gone); quitting it early stops the demo."""
    from rakka_trio_tui._command import run_tui

    captured = Console(file=io.StringIO(), width=console.width, force_terminal=False)
    ready: queue.Queue[tuple[str, str] | BaseException] = queue.Queue()
    results: list[DemoReport] = []
    stop: list[Callable[[], None]] = []
    finished = threading.Event()

    async def main() -> None:
        def on_ready(sup: Supervisor, control: ControlServer, token: str) -> None:
            trio_token = trio.lowlevel.current_trio_token()
            stop.append(lambda: trio.from_thread.run_sync(scope.cancel, trio_token=trio_token))
            ready.put((control.url, token))

        with trio.CancelScope() as scope:
            results.append(
                await demo_main(
                    duration=duration,
                    seed=seed,
                    concurrency=concurrency,
                    console=captured,
                    redis_url=redis_url,
                    live=False,
                    on_ready=on_ready,
                    fleet=fleet,
                )
            )

    def worker() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the main thread, which reports it
            ready.put(exc)
        finally:
            finished.set()

    def demo_ended() -> str | None:
        return "the demo ended; its report follows" if finished.is_set() else None

    thread = threading.Thread(target=worker, name="rakka-trio-demo", daemon=True)
    thread.start()
    first = ready.get(timeout=60)
    if isinstance(first, BaseException):
        raise first
    url, token = first
    load_ends = time.monotonic() + duration
    try:
        run_tui(url, token=token, client_name="demo-tui", exit_when=demo_ended)
    finally:
        # Quitting the console before the incident is over stops the demo; after that, the
        # demo is only writing its report, so let it finish.
        if thread.is_alive() and stop and time.monotonic() < load_ends:
            with contextlib.suppress(trio.RunFinishedError):
                stop[0]()
        thread.join(timeout=30)
    output = captured.file.getvalue() if isinstance(captured.file, io.StringIO) else ""
    console.print(output, end="", markup=False, highlight=False)
    if not results:
        console.print("(the demo was stopped before its end)")
        say("exit status 1: the console was closed before the demo's end")
        return 1
    return exit_status(results[0])
