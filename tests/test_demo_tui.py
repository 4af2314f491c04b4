"""``rakka-trio demo --tui``: the demo runs in a worker thread and the console attaches to its
control server; the demo's own output is printed once the console closes."""

from __future__ import annotations

import io

import pytest
import trio
from rich.console import Console

import rakka_trio as rk
from rakka_trio import _demo


def test_tui_attaches_to_the_running_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    attached: list[str] = []

    def fake_run_tui(url: str, *, token: str | None = None, client_name: str = "tui") -> int:
        """Stand-in for the Textual app: an operator session over the real control plane."""

        async def operate() -> None:
            async with rk.open_control_client(url, token=token, client_name=client_name) as c:
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


def test_quitting_the_tui_stops_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    import rakka_trio_tui._command

    monkeypatch.setattr(rakka_trio_tui._command, "run_tui", lambda url, **kw: 0)
    out = io.StringIO()
    status = _demo.run_demo(
        duration=60.0, seed=2, concurrency=2, tui=True, console=Console(file=out, width=120)
    )
    assert "the demo was stopped before its end" in out.getvalue()
    assert status == 1
