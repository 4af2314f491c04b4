"""``rakka-trio demo --tui``: the demo runs in a worker thread and the console attaches to its
control server; the console closes by itself when the demo ends, and the demo's own output and
report are printed at once."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest
import trio
from rich.console import Console

import rakka_trio as rk
from rakka_trio import _demo
from rakka_trio_tui import RakkaTui


def test_tui_attaches_to_the_running_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    attached: list[str] = []

    def fake_run_tui(url: str, *, token: str | None = None, **kw: Any) -> int:
        """Stand-in for the Textual app: an operator session over the real control plane."""

        async def operate() -> None:
            async with rk.open_control_client(url, token=token, client_name=kw["client_name"]) as c:
                snapshot = await c.get_state()
                attached.extend(ep.name for ep in snapshot.endpoints)
                await c.force_open("backup", duration=0.2, reason="tui-drill")
                # The operator keeps watching until the demo is over (its server goes away).
                with trio.move_on_after(10):
                    async for _ in c:
                        pass

        trio.run(operate)
        return 0

    import rakka_trio_tui._command

    monkeypatch.setattr(rakka_trio_tui._command, "run_tui", fake_run_tui)
    out = io.StringIO()
    status = _demo.run_demo(
        duration=3.0, seed=2, concurrency=4, tui=True, console=Console(file=out, width=120)
    )
    text = out.getvalue()
    assert attached == ["primary", "backup"]
    assert "operator demo-tui" in text and "force_open backup (tui-drill)" in text
    assert "Final report" in text  # the demo ran to its end while the console was attached
    assert status == 0


def test_quitting_the_tui_stops_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rakka_trio_tui._command

    monkeypatch.setattr(rakka_trio_tui._command, "run_tui", lambda url, **kw: 0)
    out = io.StringIO()
    status = _demo.run_demo(
        duration=60.0, seed=2, concurrency=2, tui=True, console=Console(file=out, width=120)
    )
    assert "the demo was stopped before its end" in out.getvalue()
    assert status == 1
    assert "the console was closed before the demo's end" in capsys.readouterr().err


def test_the_console_closes_when_the_demo_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real console (headless), attached to the real demo: when the demo is over it must
    close by itself instead of reconnecting to a server that is gone, so the report follows
    at once. A watchdog closes it after a minute, which fails the test."""
    apps: list[RakkaTui] = []

    def headless_run_tui(url: str, *, token: str | None = None, **kw: Any) -> int:
        app = RakkaTui(url, token=token, client_name=kw["client_name"], exit_when=kw["exit_when"])
        apps.append(app)

        def watchdog() -> None:
            deadline = time.monotonic() + 60
            while app.return_code is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if app.return_code is None:
                app.call_from_thread(app.exit, 99)

        threading.Thread(target=watchdog, daemon=True).start()
        app.run(headless=True, size=(100, 30))
        return app.return_code or 0

    import rakka_trio_tui._command

    monkeypatch.setattr(rakka_trio_tui._command, "run_tui", headless_run_tui)
    out = io.StringIO()
    status = _demo.run_demo(
        duration=3.0, seed=2, concurrency=4, tui=True, console=Console(file=out, width=120)
    )
    (app,) = apps
    assert app.return_code == 0, "the console did not close when the demo ended"
    assert status == 0
    text = out.getvalue()
    assert "Final report" in text and "user requests:" in text
