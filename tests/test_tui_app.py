"""The Textual app driven by Pilot against a fake control server: the real link, the real
Trio guest run on Textual's loop, only the network replaced.

Sync tests (``run_app`` runs each under ``asyncio.run`` with a timeout), so pytest-trio leaves
them alone.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, RichLog, Static
from textual.widgets.data_table import ColumnKey

from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff, RakkaTui
from rakka_trio_tui._model import LinkStatus
from rakka_trio_tui._screens import CommandScreen, ConfirmScreen, HelpScreen

from .tui_helpers import (
    FakeClock,
    FakeServer,
    connected,
    endpoint,
    row_names,
    row_text,
    run_app,
    screenshot_lines,
    stats,
    transition,
    wait_until,
)

FAST = Backoff(initial=0.02, maximum=0.05)
TOKEN = "operator-token-7f3a9c2e51"


def make_app(server: FakeServer, **kw: object) -> RakkaTui:
    return RakkaTui("ws://127.0.0.1:8765", connect=server.connect, backoff=FAST, **kw)  # type: ignore[arg-type]


def status_text(app: RakkaTui) -> str:
    return str(app.query_one("#status", Static).render())


def log_text(app: RakkaTui) -> str:
    return "\n".join(strip.text for strip in app.query_one("#log", RichLog).lines)


async def select(pilot: Pilot[int], app: RakkaTui, name: str) -> None:
    table = app.query_one("#endpoints", DataTable)
    table.move_cursor(row=row_names(app).index(name))
    await pilot.pause()
    assert app.selected_endpoint() == name


def test_shows_endpoints_role_and_connection() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        assert row_names(app) == ["alpha", "beta", "gamma"]
        assert app.query_one("#endpoints", DataTable).row_count == 3
        text = status_text(app)
        assert "● connected" in text and "as operator" in text and "3 endpoints" in text
        assert "read-only" not in text
        assert "connected as operator" in log_text(app)
        assert app.check_action("force_open", ()) is True

    run_app(app, scenario)


def test_force_open_dialog_sends_duration_and_reason() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "beta")
        await pilot.press("f")
        assert isinstance(app.screen, CommandScreen)
        assert app.screen.endpoint == "beta"
        await pilot.press(*"5m")
        await pilot.press("enter")  # to the reason field
        await pilot.press(*"incident-42")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        assert server.commands() == [
            proto.ForceOpen(id=1, endpoint="beta", duration=300.0, reason="incident-42")
        ]
        assert not isinstance(app.screen, CommandScreen)
        await wait_until(pilot, lambda: "done, now forced_open" in log_text(app), "the ack")
        assert "sent force_open beta for 5m00s (reason: incident-42)" in log_text(app)

    run_app(app, scenario)


def test_force_open_dialog_refuses_bad_values_and_cancels() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press("f")
        screen = app.screen
        assert isinstance(screen, CommandScreen) and screen.endpoint == "alpha"
        await pilot.press(*"soon")
        await pilot.click("#confirm")
        problem = str(screen.query_one("#problem", Static).render())
        assert "duration" in problem
        assert app.screen is screen  # still open, nothing sent
        # The protocol's own validation runs before sending: control characters are refused.
        screen.query_one("#duration", Input).value = "30"
        reason = screen.query_one("#reason", Input)
        reason.value = "bad\u202ereason"
        reason.focus()
        await pilot.press("enter")  # Enter in the reason confirms
        assert "reason" in str(screen.query_one("#problem", Static).render())
        await pilot.press("escape")
        assert not isinstance(app.screen, CommandScreen)
        await pilot.pause(0.05)
        assert server.commands() == []

    run_app(app, scenario)


def test_disable_until_reset() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "gamma")
        await pilot.press("d")
        assert isinstance(app.screen, CommandScreen) and app.screen.kind == "disable"
        await pilot.press("enter", "enter")  # blank duration, blank reason: confirm
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        assert server.commands() == [
            proto.Disable(id=1, endpoint="gamma", duration=None, reason=None)
        ]

    run_app(app, scenario)


def test_reset_asks_for_confirmation() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "beta")
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")  # "No" has the focus: a stray Enter must not reset
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("r")
        await pilot.press("n")
        await pilot.pause(0.05)
        assert server.commands() == []
        await pilot.press("r")
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        assert server.commands() == [proto.Reset(id=1, endpoint="beta", reason=None)]

    run_app(app, scenario)


def test_viewer_cannot_command() -> None:
    server = FakeServer(role="viewer")
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        assert "as viewer" in status_text(app)
        assert "read-only: commands need an operator token" in status_text(app)
        for action in ("force_open", "reset", "disable"):
            assert app.check_action(action, ()) is None  # greyed out in the footer
        await pilot.press("f", "r", "d")
        await pilot.pause(0.05)
        assert app.screen is app.screen_stack[0]  # no dialog opened
        assert server.commands() == []
        # Each press says why (Textual keeps toasts in a private list; no public reader).
        hints = [n.message for n in app._notifications]
        assert hints == ["read-only connection (viewer): commands need an operator token"] * 3
        # Filtering and help still work read-only.
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    run_app(app, scenario)


def test_filter_narrows_rows() -> None:
    server = FakeServer(
        endpoints=(
            endpoint("alpha", provider="openai"),
            endpoint("beta", provider="anthropic", state="forced_open", until_reset=True),
            endpoint("gamma", provider="openai"),
        )
    )
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        table = app.query_one("#endpoints", DataTable)
        await pilot.press("slash")
        assert app.query_one("#filter", Input).has_focus
        await pilot.press(*"OPEN")  # case-insensitive, matches name, provider or state
        assert row_names(app) == ["alpha", "beta", "gamma"]  # openai, forced_open, openai
        await pilot.press("backspace", "backspace", "backspace", "backspace", *"anthropic")
        assert row_names(app) == ["beta"] and table.row_count == 1
        await pilot.press("enter")  # keep the filter, back to the table
        assert table.has_focus and app.filter_text == "anthropic"
        await pilot.press("slash", "ctrl+a")
        app.query_one("#filter", Input).value = "nothing-matches"
        await pilot.pause()
        assert table.row_count == 0
        assert "no endpoint matches" in str(app.query_one("#empty", Static).render())
        await pilot.press("escape")  # clears and hides the filter
        assert app.filter_text == "" and table.row_count == 3
        assert not app.query_one("#filter", Input).display

    run_app(app, scenario)


def test_frames_update_table_and_log() -> None:
    clock = FakeClock()
    server = FakeServer()
    app = make_app(server, clock=clock)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        server.push(
            transition(
                "alpha",
                "closed",
                "open",
                consecutive_failures=5,
                failure_rate=0.5,
                calls_in_window=10,
                trips=1,
                open_until_in=30.0,
            )
        )
        await wait_until(pilot, lambda: row_text(app, "alpha")[2] == "open", "the transition")
        assert row_text(app, "alpha")[3:6] == ["5", "50% of 10", "30s"]
        assert "closed → open  (failure_threshold)  5 consecutive failures" in log_text(app)
        clock.now += 12  # the countdown runs between frames
        await wait_until(pilot, lambda: row_text(app, "alpha")[5] == "18s", "the countdown")
        server.push(
            stats(
                endpoint("alpha", in_flight=3, latency_p95=0.25, limiter_utilization=0.9),
                endpoint("beta"),
            )
        )
        await wait_until(pilot, lambda: row_names(app) == ["alpha", "beta"], "the stats")
        assert row_text(app, "alpha")[6:9] == ["90%", "3", "250ms"]

    run_app(app, scenario)


def test_lagged_frame_refreshes_state() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        server.endpoints = [endpoint("alpha", state="forced_open", until_reset=True)]
        server.push(proto.LaggedFrame(wall=1_700_000_003.0, dropped=12))
        await wait_until(pilot, lambda: row_names(app) == ["alpha"], "the refreshed state")
        assert row_text(app, "alpha")[2] == "forced_open"
        assert "fell behind: 12 events dropped" in log_text(app)

    run_app(app, scenario)


def test_reconnecting_state_when_the_connection_drops() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        server.refuse = "could not connect to ws://127.0.0.1:8765: connection refused"
        server.drop()
        await wait_until(
            pilot, lambda: app.model.link.status is LinkStatus.RECONNECTING, "reconnecting"
        )
        await wait_until(pilot, lambda: server.attempts >= 3, "retries")
        text = status_text(app)
        assert "◌ reconnecting" in text and "connection refused" in text
        assert "connection lost: closed by the server (code 1001: server going away)" in (
            log_text(app)
        )
        # The last known state stays on screen, marked stale; commands are unavailable.
        assert row_names(app) == ["alpha", "beta", "gamma"]
        assert app.query_one("#endpoints", DataTable).has_class("stale")
        assert app.check_action("force_open", ()) is None
        await pilot.press("f")
        assert not isinstance(app.screen, CommandScreen)

        server.refuse = None
        await connected(pilot, app)
        assert server.connections == 2
        assert not app.query_one("#endpoints", DataTable).has_class("stale")
        assert app.check_action("force_open", ()) is True

    run_app(app, scenario)


def test_refused_token_stops_retrying() -> None:
    server = FakeServer()
    server.reject_token = True
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_until(pilot, lambda: app.model.link.status is LinkStatus.FAILED, "failure")
        await pilot.pause(0.2)  # several backoff periods: no further attempt
        assert server.attempts == 1
        status = status_text(app)
        assert "✖ not connected (not retrying): ws://fake: token not accepted" in status
        # Nothing on screen may claim the console is still waiting for the server.
        screen = "\n".join(screenshot_lines(app.export_screenshot(), 120))
        assert "waiting for the server" not in screen
        assert "stopped trying to connect" in screen

    run_app(app, scenario)


def test_token_never_reaches_the_screen() -> None:
    server = FakeServer()
    url = f"ws://user:{TOKEN}@127.0.0.1:8765/?token={TOKEN}"
    server.refuse = f"could not connect to {url}: bad token {TOKEN}"
    app = RakkaTui(url, token=TOKEN, connect=server.connect, backoff=FAST)

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_until(pilot, lambda: server.attempts >= 2, "retries")
        await pilot.pause(0.05)
        shown = status_text(app) + log_text(app)
        assert "ws://127.0.0.1:8765 " in shown and "bad token ***" in shown
        screen = "\n".join(screenshot_lines(app.export_screenshot(), 200))
        assert "could not connect to ws://127.0.0.1:8765: bad token ***" in screen
        assert TOKEN not in shown and TOKEN not in screen and TOKEN not in repr(app)

    run_app(app, scenario, size=(200, 32))


@pytest.mark.parametrize("key", ["q", "ctrl+q", "ctrl+c"])
def test_quit_stops_the_link(key: str) -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press(key)
        await wait_until(pilot, lambda: not app.is_running, "exit")

    run_app(app, scenario)
    assert app.return_code == 0
    assert server.client is None  # the connection was closed on the way out


@pytest.mark.parametrize("where", ["filter", "dialog"])
def test_ctrl_c_quits_from_the_filter_box_and_dialogs(where: str) -> None:
    # Ctrl-C is "copy" in a text input and does nothing in a modal: it must still quit.
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press("slash" if where == "filter" else "f")
        await pilot.press(*"ab")
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.is_running, "exit")

    run_app(app, scenario)
    assert app.return_code == 0 and server.commands() == []


def test_exit_when_closes_the_console_with_its_message() -> None:
    server = FakeServer()
    ended: list[str] = []
    app = make_app(server, exit_when=lambda: ended[0] if ended else None)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.pause(0.6)  # a tick went by: still running
        assert app.is_running
        ended.append("the demo ended")
        await wait_until(pilot, lambda: not app.is_running, "exit")

    run_app(app, scenario)
    assert app.return_code == 0
    assert server.client is None


@pytest.mark.parametrize(("typed", "seconds"), [("90", 90.0), ("2h", 7200.0), ("1d", 86400.0)])
def test_dialog_takes_the_command_line_duration_units(typed: str, seconds: float) -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press("f", *typed, "enter", "enter")
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        (command,) = server.commands()
        assert isinstance(command, proto.ForceOpen) and command.duration == seconds

    run_app(app, scenario)


def _serving_scene() -> FakeServer:
    return FakeServer(
        endpoints=(
            endpoint("primary", state="open", open_until_in=30.0),
            endpoint("backup", provider="anthropic"),
            endpoint("spare", state="forced_open", until_reset=True),
        )
    )


@pytest.mark.parametrize("answers", [("y", "y"), ("y", "n"), ("n",), ("escape",)])
def test_forcing_open_the_last_serving_endpoint_warns_and_asks_twice(
    answers: tuple[str, ...],
) -> None:
    server = _serving_scene()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "backup")
        await pilot.press("f", *"5m", "enter", *"drill", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        assert "last endpoint serving" in app.screen.title_text
        # A stray Enter answers "no": the focus starts on the safe button.
        for answer in answers:
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press(answer)
        await pilot.pause(0.05)
        assert not isinstance(app.screen, ConfirmScreen)
        if answers == ("y", "y"):
            await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
            assert server.commands() == [
                proto.ForceOpen(id=1, endpoint="backup", duration=300.0, reason="drill")
            ]
        else:
            await pilot.pause(0.05)
            assert server.commands() == []

    run_app(app, scenario)


def test_enter_on_the_warning_does_not_force_open() -> None:
    server = _serving_scene()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "backup")
        await pilot.press("f", "enter", "enter")  # until reset, no reason
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert not isinstance(app.screen, ConfirmScreen)
        assert server.commands() == []

    run_app(app, scenario)


def test_no_warning_while_another_endpoint_serves() -> None:
    # Forcing open "primary" (already open) or any endpoint while "backup" serves: one dialog.
    server = FakeServer(endpoints=(endpoint("primary"), endpoint("backup", state="half_open")))
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await select(pilot, app, "primary")
        await pilot.press("f", "enter", "enter")
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        assert not isinstance(app.screen, ConfirmScreen)

    run_app(app, scenario)


def test_help_fits_80_by_24_without_breaking_a_phrase() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        screen = "\n".join(screenshot_lines(app.export_screenshot(), 80))
        for phrase in (
            "force the selected breaker open (asks duration, reason)",
            "filter the table by name, provider or state (Esc clears)",
            "quit (also Ctrl-C, Ctrl-Q)",
            "Durations: 300, 90s, 5m, 1.5h, 1d or 1h30m; blank means until reset.",
        ):
            assert phrase in screen, phrase
        assert "Close" in screen  # the button is on screen; the text scrolls above it

    run_app(app, scenario, size=(80, 24))


@pytest.mark.parametrize("key", ["escape", "q", "question_mark"])
def test_help_opens_and_closes(key: str) -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press(key)
        assert not isinstance(app.screen, HelpScreen)
        assert app.is_running

    run_app(app, scenario)


def test_cells_update_in_place_and_columns_grow() -> None:
    server = FakeServer()
    app = make_app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        table = app.query_one("#endpoints", DataTable)
        await select(pilot, app, "beta")
        names = ("alpha", "beta", "gamma")
        server.push(stats(*(endpoint(n, consecutive_failures=3, failures=3) for n in names)))
        await wait_until(pilot, lambda: str(table.get_cell("alpha", "FAILS")) == "3", "update")
        assert app.selected_endpoint() == "beta"  # the cursor stayed put
        note = "a reason much wider than the NOTE column was so far " * 2
        server.push(
            stats(
                endpoint("alpha", state="forced_open", until_reset=True, forced_reason=note),
                *(endpoint(n) for n in names[1:]),
            )
        )
        await wait_until(pilot, lambda: str(table.get_cell("alpha", "NOTE")) == note, "note")
        assert table.columns[ColumnKey("NOTE")].content_width >= len(note)
        assert app.selected_endpoint() == "beta"

    run_app(app, scenario, size=(240, 32))
