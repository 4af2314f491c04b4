"""The TUI against real control servers on 127.0.0.1 port 0, each in its own thread and Trio
run, while the TUI runs Trio in guest mode on Textual's asyncio loop in the test's thread.

Server-side actions go through ``trio.from_thread`` (called via ``asyncio.to_thread`` so the
TUI's loop keeps running meanwhile). Every test is bounded by ``run_app``'s timeout.
"""

from __future__ import annotations

import asyncio
import functools
import io
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import trio
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable

import rakka_trio as rk
from rakka_trio._demo import demo_main
from rakka_trio_tui import Backoff, RakkaTui
from rakka_trio_tui._model import LinkStatus
from rakka_trio_tui._screens import CommandScreen, ConfirmScreen

from .control_helpers import TOKEN, supervisor_config
from .tui_helpers import connected, row_names, row_text, run_app, wait_until

T = TypeVar("T")
FAST = Backoff(initial=0.05, maximum=0.2)


class ServerThread:
    """A supervisor and its control server in a thread of their own (own ``trio.run``)."""

    def __init__(self, *names: str, **server_kw: Any) -> None:
        self._names = names or ("a", "b")
        self._server_kw = {"token": TOKEN, **server_kw}
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="control-server", daemon=True)
        self.token: trio.lowlevel.TrioToken | None = None
        self.sup: rk.Supervisor | None = None
        self.server: rk.ControlServer | None = None
        self._nursery: trio.Nursery | None = None
        self.port = 0

    def __enter__(self) -> ServerThread:
        self._thread.start()
        failure = self._ready.get(timeout=15)
        if failure is not None:
            raise failure
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.token is not None and self._nursery is not None:
            trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the server thread did not stop"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test thread, which re-raises it
            self._ready.put(exc)

    async def _main(self) -> None:
        async with (
            rk.open_supervisor(supervisor_config(*self._names, stats_interval=0.2)) as sup,
            trio.open_nursery() as nursery,
        ):
            self.sup, self._nursery = sup, nursery
            await self._serve()
            self.token = trio.lowlevel.current_trio_token()
            self._ready.put(None)
            await trio.sleep_forever()

    async def _serve(self) -> None:
        assert self._nursery is not None and self.sup is not None
        self.server = await self._nursery.start(
            functools.partial(rk.serve_control, self.sup, "127.0.0.1", self.port, **self._server_kw)
        )
        self.port = self.server.port

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn`` in the server's Trio run and return its result (blocking)."""
        assert self.token is not None
        return trio.from_thread.run_sync(functools.partial(fn, *args, **kw), trio_token=self.token)

    async def act(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """:meth:`call` without blocking the test's asyncio loop."""
        return await asyncio.to_thread(self.call, fn, *args, **kw)

    def stop_serving(self) -> None:
        """Close the control server (the supervisor keeps running)."""
        assert self.server is not None
        self.call(self.server.close)

    def serve_again(self) -> None:
        """Serve again on the same port."""
        assert self.token is not None
        trio.from_thread.run(self._serve, trio_token=self.token)


def breaker_state(server: ServerThread, name: str) -> str:
    assert server.sup is not None
    return str(server.call(lambda: server.sup.breaker(name).state.value))  # type: ignore[union-attr]


def test_transition_triggered_server_side_appears_and_reset_works() -> None:
    with ServerThread("alpha", "beta") as server:
        app = RakkaTui(server.url, token=TOKEN, backoff=FAST)

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            assert row_names(app) == ["alpha", "beta"]
            assert app.model.link.role == "operator"
            assert server.sup is not None
            await server.act(server.sup.force_open, "beta", duration=120.0, reason="incident-9")
            await wait_until(
                pilot, lambda: row_text(app, "beta")[2] == "forced_open", "the transition"
            )
            row = row_text(app, "beta")
            assert row[5] in ("2m00s", "1m59s") and row[11] == "incident-9 by api"
            # Operator reset from the TUI reaches the real breaker.
            app.query_one("#endpoints", DataTable).move_cursor(row=1)
            await pilot.press("r")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_until(pilot, lambda: row_text(app, "beta")[2] == "closed", "the reset")
            assert breaker_state(server, "beta") == "closed"

        run_app(app, scenario, timeout=30)


def test_force_open_from_the_tui_reaches_the_breaker() -> None:
    with ServerThread("alpha", "beta") as server:
        app = RakkaTui(server.url, token=TOKEN, client_name="ops", backoff=FAST)

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            await pilot.press("f")
            assert isinstance(app.screen, CommandScreen) and app.screen.endpoint == "alpha"
            await pilot.press(*"90", "enter", *"drill-3", "enter")
            await wait_until(
                pilot, lambda: row_text(app, "alpha")[2] == "forced_open", "the command"
            )
            assert breaker_state(server, "alpha") == "forced_open"
            assert row_text(app, "alpha")[11].startswith("drill-3 by ops@127.0.0.1:")

        run_app(app, scenario, timeout=30)


def test_viewer_against_a_real_server_is_read_only() -> None:
    with ServerThread("alpha", allow_viewers=True) as server:
        app = RakkaTui(server.url, token="not-the-token", backoff=FAST)

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            assert app.model.link.role == "viewer"
            await pilot.press("f")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, CommandScreen)
            assert breaker_state(server, "alpha") == "closed"

        run_app(app, scenario, timeout=30)


def test_reconnects_when_the_server_comes_back() -> None:
    with ServerThread("alpha") as server:
        app = RakkaTui(server.url, token=TOKEN, backoff=FAST)

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            await asyncio.to_thread(server.stop_serving)
            await wait_until(
                pilot, lambda: app.model.link.status is LinkStatus.RECONNECTING, "reconnecting"
            )
            assert server.sup is not None
            # Changes while the TUI is away are in the welcome snapshot when it is back.
            await server.act(server.sup.force_open, "alpha", reason="while-away")
            await asyncio.to_thread(server.serve_again)
            await connected(pilot, app)
            await wait_until(pilot, lambda: row_text(app, "alpha")[2] == "forced_open", "state")
            assert row_text(app, "alpha")[5] == "until reset"

        run_app(app, scenario, timeout=30)


class DemoThread:
    """``rakka-trio demo``'s scenario (``demo_main``) in a thread, stoppable early."""

    def __init__(self, duration: float) -> None:
        self._duration = duration
        self._ready: queue.Queue[tuple[str, str] | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="demo", daemon=True)
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.url = ""
        self.token = ""

    def __enter__(self) -> DemoThread:
        self._thread.start()
        ready = self._ready.get(timeout=20)
        if isinstance(ready, BaseException):
            raise ready
        self.url, self.token = ready
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scope is not None and self._token is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=20)
        assert not self._thread.is_alive(), "the demo did not stop"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._ready.put(exc)

    async def _main(self) -> None:
        def on_ready(sup: rk.Supervisor, control: rk.ControlServer, token: str) -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._ready.put((control.url, token))

        console = Console(file=io.StringIO(), width=160, force_terminal=False)
        with trio.CancelScope() as scope:
            self._scope = scope
            await demo_main(
                duration=self._duration,
                seed=5,
                concurrency=4,
                console=console,
                live=False,
                on_ready=on_ready,
            )


def test_incident_drill_against_the_demo() -> None:
    """Against the demo, `f` on the healthy endpoint forces it open and
    the demo's traffic fails over to the backup at once."""
    # The storm starts at 20 % of the run: 30 s leaves the primary healthy while we drill.
    with DemoThread(duration=30.0) as demo:
        app = RakkaTui(demo.url, token=demo.token, client_name="drill", backoff=FAST)

        def figures(name: str) -> tuple[int, int]:
            view = app.model.endpoint(name)
            assert view is not None
            return view.state.successes, view.state.rejected

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            assert row_names(app) == ["primary", "backup"]
            await wait_until(pilot, lambda: figures("primary")[0] > 0, "primary serving")
            assert row_text(app, "primary")[2] == "closed"
            await pilot.press("f", *"10m", "enter", *"drill-1", "enter")
            await wait_until(
                pilot, lambda: row_text(app, "primary")[2] == "forced_open", "the force-open"
            )
            primary_ok, primary_rejected = figures("primary")
            backup_ok, _ = figures("backup")
            # The next stats frames show the traffic moved: primary fails fast, backup serves.
            await wait_until(
                pilot,
                lambda: (
                    figures("primary")[1] > primary_rejected + 5
                    and figures("backup")[0] > backup_ok + 5
                ),
                "failover",
                within=10,
            )
            assert int(row_text(app, "primary")[10]) > primary_rejected + 5  # REJECTED
            # Nothing new reached the forced endpoint (calls already under way may finish).
            assert figures("primary")[0] <= primary_ok + 4
            assert row_text(app, "primary")[11].startswith("drill-1 by drill@127.0.0.1:")

        run_app(app, scenario, timeout=40)
