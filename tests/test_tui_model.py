"""The TUI's pure reducer: frames and connection events in, table rows, header and log out."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff
from rakka_trio_tui._model import (
    CommandDone,
    CommandRequest,
    CommandSent,
    Connected,
    Connecting,
    Disconnected,
    Input,
    LinkStatus,
    LogLine,
    Model,
    SnapshotReceived,
    reduce,
)
from rakka_trio_tui._text import (
    MISSING,
    display_url,
    format_clock,
    format_duration,
    parse_duration,
    safe_text,
)
from rakka_trio_tui._view import (
    COLUMN_PRIORITY,
    COLUMNS,
    DISPLAY_ORDER,
    Cell,
    ColumnLayout,
    Row,
    empty_text,
    fit_columns,
    log_cells,
    matches_filter,
    status_cells,
    table_rows,
)

from .tui_helpers import endpoint, snapshot, stats, transition, welcome

URL = "ws://127.0.0.1:8765"


def fold(
    *events: Input, now: float = 100.0, model: Model | None = None
) -> tuple[Model, list[LogLine]]:
    """Reduce ``events`` in order at time ``now``; the model and every log line."""
    current = model or Model()
    lines: list[LogLine] = []
    for event in events:
        current, produced = reduce(current, event, now)
        lines.extend(produced)
    return current, lines


def cells(model: Model, name: str, now: float = 100.0) -> dict[str, str]:
    """Column title → text for ``name``'s row."""
    for row in table_rows(model, now):
        if row.key == name:
            return {title: cell.text for title, cell in zip(COLUMNS, row.cells, strict=True)}
    raise AssertionError(f"no row {name!r}")


def style(model: Model, name: str, column: str, now: float = 100.0) -> str:
    for row in table_rows(model, now):
        if row.key == name:
            return row.cells[COLUMNS.index(column)].style
    raise AssertionError(f"no row {name!r}")


def header(model: Model, now: float = 100.0) -> str:
    return "".join(cell.text for cell in status_cells(model, URL, now))


@pytest.fixture
def utc() -> Iterator[None]:
    """Log times in UTC, whatever the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# --- connection ---------------------------------------------------------------------------------


def test_initial_model_is_connecting_with_no_rows() -> None:
    model = Model()
    assert model.link.status is LinkStatus.CONNECTING and not model.can_command
    assert table_rows(model, 0.0) == []
    assert "◌ connecting…" in header(model)


def test_welcome_fills_the_table_and_header() -> None:
    model, lines = fold(
        Connecting(attempt=0), Connected(welcome=welcome("operator", endpoint("a"), endpoint("b")))
    )
    assert model.link.status is LinkStatus.CONNECTED and model.can_command
    assert [row.key for row in table_rows(model, 100.0)] == ["a", "b"]
    text = header(model)
    assert "● connected" in text and "as operator" in text and "node node-1" in text
    assert "2 endpoints" in text and "read-only" not in text
    assert [line.text for line in lines] == [
        "connected as operator to rakka-trio/test (node node-1)"
    ]


def test_viewer_gets_a_read_only_hint_and_no_commands() -> None:
    model, _ = fold(Connected(welcome=welcome("viewer", endpoint("a"))))
    assert not model.can_command
    assert "as viewer" in header(model)
    assert "read-only: commands need an operator token" in header(model)


def test_disconnect_with_retry_is_reconnecting_and_counts_down() -> None:
    model, lines = fold(
        Connected(welcome=welcome("operator", endpoint("a"))),
        Disconnected(reason="connection lost: closed by the server", retry_in=4.0, attempt=1),
        now=10.0,
    )
    assert model.link.status is LinkStatus.RECONNECTING and not model.can_command
    assert model.link.retry_at == 14.0
    assert "◌ reconnecting in 4s (retry 1)" in header(model, now=10.0)
    assert "◌ reconnecting in 2s (retry 1)" in header(model, now=12.0)
    assert "connection lost: closed by the server" in header(model, now=12.0)
    assert lines[-1].text == "connection lost: closed by the server; retrying in 4s"
    # The last known endpoints stay (shown stale) until the next welcome.
    assert [row.key for row in table_rows(model, 10.0)] == ["a"]
    # While the next attempt runs, the header still says "reconnecting".
    model, _ = fold(Connecting(attempt=1), model=model, now=15.0)
    assert model.link.status is LinkStatus.RECONNECTING
    assert "◌ reconnecting… (retry 1)" in header(model, now=15.0)
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("b"))), model=model)
    assert model.link.status is LinkStatus.CONNECTED and model.link.error is None
    assert [row.key for row in table_rows(model, 10.0)] == ["b"]


def test_disconnect_without_retry_is_final() -> None:
    model, lines = fold(Disconnected(reason="token not accepted", retry_in=None, attempt=0))
    assert model.link.status is LinkStatus.FAILED
    assert "✖ not connected (not retrying): token not accepted" in header(model)
    assert lines[-1].text == "not connected: token not accepted (not retrying)"


def test_a_refused_token_is_not_called_waiting() -> None:
    # The console gave up: the space under the empty table must not say it is waiting.
    model, _ = fold(Disconnected(reason="token not accepted", retry_in=None, attempt=0))
    text = empty_text(model)
    assert "waiting" not in text and "stopped trying" in text
    model, _ = fold(Connecting(attempt=0))
    assert empty_text(model) == "waiting for the server…"
    model, _ = fold(Disconnected(reason="refused", retry_in=1.0, attempt=1))
    assert "reconnecting" in empty_text(model)
    model, _ = fold(Connected(welcome=welcome("operator")))
    assert empty_text(model) == "the server has no endpoints"
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"))))
    assert empty_text(model) == ""
    assert empty_text(model, "zzz") == "no endpoint matches the filter 'zzz'"


def test_header_says_stale_when_frames_stop() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"))), now=0.0)
    assert "no update" not in header(model, now=4.0)  # stats_interval 1s: 5s grace
    assert "no update for 9s" in header(model, now=9.0)
    model, _ = fold(stats(endpoint("a")), model=model, now=9.0)
    assert "no update" not in header(model, now=9.5)


# --- frames -------------------------------------------------------------------------------------


def test_stats_replace_the_endpoints_in_server_order() -> None:
    model, lines = fold(
        Connected(welcome=welcome("operator", endpoint("a"), endpoint("b"))),
        stats(endpoint("c"), endpoint("a", consecutive_failures=2, failures=7)),
    )
    assert lines[1:] == []  # stats are not logged
    assert [row.key for row in table_rows(model, 100.0)] == ["c", "a"]
    assert cells(model, "a")["FAILS"] == "2 (7)"
    assert style(model, "a", "FAILS") == "red"


def test_missing_figures_show_a_dash() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"))))
    row = cells(model, "a")
    for column in ("FAIL RATE", "OPEN UNTIL", "LIMIT", "IN-FLIGHT", "P95"):
        assert row[column] == MISSING == "\N{EN DASH}"
    assert row["NOTE"] == ""


def test_reported_figures_are_formatted() -> None:
    ep = endpoint(
        "a",
        failure_rate=0.25,
        calls_in_window=40,
        limiter_utilization=0.85,
        in_flight=3,
        queue_depth=5,
        latency_p95=0.1234,
        trips=2,
    )
    model, _ = fold(Connected(welcome=welcome("operator", ep)))
    row = cells(model, "a")
    assert row["FAIL RATE"] == "25% of 40" and style(model, "a", "FAIL RATE") == "yellow"
    assert row["LIMIT"] == "85%" and style(model, "a", "LIMIT") == "yellow"
    assert row["IN-FLIGHT"] == "3 +5 queued"
    assert row["P95"] == "123ms"
    assert row["TRIPS"] == "2"
    assert row["REJECTED"] == "0" and style(model, "a", "REJECTED") == ""
    slow = attrs.evolve(
        ep, latency_p95=2.5, limiter_utilization=0.99, failure_rate=0.004, rejected=12
    )
    model, _ = fold(stats(slow), model=model)
    row = cells(model, "a")
    assert row["REJECTED"] == "12" and style(model, "a", "REJECTED") == "magenta"
    assert row["P95"] == "2.50s" and row["FAIL RATE"] == "<1% of 40"
    assert style(model, "a", "LIMIT") == "red"


@pytest.mark.parametrize(
    ("state", "style_name"),
    [
        ("closed", "green"),
        ("open", "bold red"),
        ("half_open", "yellow"),
        ("forced_open", "bold magenta"),
        ("disabled", "dim"),
        ("from_the_future", ""),
    ],
)
def test_states_are_coloured(state: str, style_name: str) -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a", state=state))))
    assert cells(model, "a")["STATE"] == state
    assert style(model, "a", "STATE") == style_name


def test_open_until_counts_down_locally_between_frames() -> None:
    ep = endpoint("a", state="open", open_until_in=30.0)
    model, _ = fold(Connected(welcome=welcome("operator", ep)), now=100.0)
    assert cells(model, "a", now=100.0)["OPEN UNTIL"] == "30s"
    assert cells(model, "a", now=112.5)["OPEN UNTIL"] == "18s"
    assert cells(model, "a", now=200.0)["OPEN UNTIL"] == "0s"  # never negative
    forced = endpoint("b", state="forced_open", until_reset=True, forced_reason="incident-7")
    model, _ = fold(stats(forced), model=model)
    assert cells(model, "b")["OPEN UNTIL"] == "until reset"
    assert cells(model, "b")["NOTE"] == "incident-7"
    # A closed breaker has no timer, whatever the frame says.
    model, _ = fold(stats(endpoint("c", open_until_in=5.0)), model=model)
    assert cells(model, "c")["OPEN UNTIL"] == MISSING


def test_transition_updates_the_row_at_once_and_is_logged() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a", failures=3))))
    frame = transition(
        "a",
        "closed",
        "forced_open",
        cause="forced",
        open_until_in=300.0,
        actor="tui@127.0.0.1:5000",
        reason="incident-42",
        trips=0,
    )
    model, lines = fold(frame, model=model, now=100.0)
    row = cells(model, "a", now=160.0)
    assert row["STATE"] == "forced_open" and row["OPEN UNTIL"] == "4m00s"
    assert row["NOTE"] == "incident-42 by tui@127.0.0.1:5000"
    assert row["FAILS"] == "0 (3)"
    (line,) = lines
    assert line.endpoint == "a" and line.wall == frame.wall and line.style == "bold magenta"
    assert line.text == (
        "closed → forced_open  (forced)  for 5m00s  by tui@127.0.0.1:5000  reason: incident-42"
    )
    # Leaving the forced state clears the note.
    model, _ = fold(transition("a", "forced_open", "closed", cause="reset"), model=model)
    assert cells(model, "a")["NOTE"] == "" and cells(model, "a")["STATE"] == "closed"


def test_trip_transition_line_names_the_cause_and_counts() -> None:
    frame = transition(
        "a",
        "closed",
        "open",
        consecutive_failures=5,
        failure_rate=0.5,
        calls_in_window=10,
        open_until_in=30.0,
    )
    _, lines = fold(Connected(welcome=welcome("operator", endpoint("a"))), frame)
    assert lines[-1].text == (
        "closed → open  (failure_threshold)  5 consecutive failures  failure rate 50%  for 30s"
    )
    assert lines[-1].style == "bold red"


def test_transition_of_an_unknown_endpoint_is_logged_only() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"))))
    after, lines = fold(transition("zz", "closed", "open"), model=model)
    assert after.endpoints == model.endpoints
    assert lines[0].endpoint == "zz"


def test_command_audit_is_logged() -> None:
    frame = proto.CommandFrame(
        wall=1.0,
        endpoint="a",
        command="force_open",
        actor="cli:alice@127.0.0.1:5",
        reason="drill",
        duration=None,
    )
    _, lines = fold(frame)
    assert lines[0].text == "force_open by cli:alice@127.0.0.1:5 until reset  reason: drill"
    reset = attrs.evolve(frame, command="reset", reason=None)
    assert fold(reset)[1][0].text == "reset by cli:alice@127.0.0.1:5"


def test_other_frames() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"), endpoint("b"))))
    model, lines = fold(
        proto.LaggedFrame(wall=1.0, dropped=17),
        proto.EndpointAddedFrame(wall=2.0, endpoint="c"),
        proto.EndpointRemovedFrame(wall=3.0, endpoint="a"),
        proto.TaskRestartedFrame(wall=4.0, task="stats", error="boom", crashes=2, backoff=0.5),
        proto.ErrorFrame(id=None, code="rate_limited", message="slow down"),
        proto.UnknownFrame(type="from_the_future", data={"type": "from_the_future"}),
        model=model,
    )
    assert [row.key for row in table_rows(model, 0.0)] == ["b"]
    assert [(line.endpoint, line.text) for line in lines] == [
        (None, "fell behind: 17 events dropped (state refreshed)"),
        ("c", "endpoint added"),
        ("a", "endpoint removed"),
        (None, "task stats crashed (boom); restart #2 in 0.5s"),
        (None, "server error rate_limited: slow down"),
    ]


def test_fresh_snapshots_replace_the_table() -> None:
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("a"))))
    model, _ = fold(SnapshotReceived(snapshot=snapshot(endpoint("x"), endpoint("y"))), model=model)
    assert [row.key for row in table_rows(model, 0.0)] == ["x", "y"]
    ack = proto.AckFrame(id=1, command="get_state", snapshot=snapshot(endpoint("z")))
    model, lines = fold(ack, model=model)
    assert [row.key for row in table_rows(model, 0.0)] == ["z"] and lines == []
    plain = proto.AckFrame(id=2, command="reset", endpoint="z", state="closed")
    assert fold(plain, model=model)[0].endpoints == model.endpoints


def test_command_lifecycle_lines() -> None:
    request = CommandRequest(kind="force_open", endpoint="a", duration=90.0, reason="x")
    _, lines = fold(
        CommandSent(request=request),
        CommandDone(request=request, ok=True, state="forced_open"),
        CommandDone(request=request, ok=False, error="forbidden: viewers may not act"),
    )
    assert [(line.text, line.style) for line in lines] == [
        ("sent force_open a for 1m30s (reason: x)", "cyan"),
        ("force_open a: done, now forced_open", "cyan"),
        ("force_open a failed: forbidden: viewers may not act", "bold red"),
    ]
    reset = CommandRequest(kind="reset", endpoint="a")
    assert reset.describe() == "reset a"
    assert CommandRequest(kind="disable", endpoint="a").describe() == "disable a until reset"


# --- hostile text -------------------------------------------------------------------------------


def test_network_text_cannot_reach_the_terminal_raw() -> None:
    evil = "a\x1b[2J\u202e\n"
    ep = endpoint(evil, provider="x\x07", forced_reason="r\x1b]0;pwn\x07", forced_by="b\r")
    model, lines = fold(
        Connected(welcome=welcome("operator\x1b[31m", ep)),
        transition(evil, "closed", "open", reason="\x1b[1m"),
    )
    texts = [cell.text for row in table_rows(model, 0.0) for cell in row.cells]
    texts += [cell.text for cell in status_cells(model, URL, 0.0)]
    texts += [cell.text for line in lines for cell in log_cells(line, 0.0)]
    for text in texts:
        assert text.isprintable(), repr(text)
    assert cells(model, evil)["ENDPOINT"] == "a\\x1b[2J\\x202e\\x0a"


def test_safe_text() -> None:
    assert safe_text("plain text") == "plain text"
    assert safe_text("\x1b[0m") == "\\x1b[0m"
    assert safe_text("tab\there") == "tab\\x09here"


def test_display_url_drops_credentials() -> None:
    assert display_url("ws://127.0.0.1:8765") == "ws://127.0.0.1:8765"
    assert display_url("wss://user:secret@host.example:443/ctl?token=secret#x") == (
        "wss://host.example:443/ctl"
    )
    assert display_url("ws://[::1]:9/") == "ws://[::1]:9"
    assert display_url("ws://host:notaport") == "<invalid url>"


# --- filter, durations, clock -------------------------------------------------------------------


def test_filter_matches_name_provider_and_state() -> None:
    ep = endpoint("openai-primary", provider="openai", state="forced_open")
    assert matches_filter(ep, "")
    assert matches_filter(ep, "PRIMARY")
    assert matches_filter(ep, "forced")
    assert matches_filter(ep, "openai forced")  # every word must match
    assert not matches_filter(ep, "openai closed")
    model, _ = fold(
        Connected(welcome=welcome("operator", ep, endpoint("backup", provider="anthropic")))
    )
    assert [row.key for row in table_rows(model, 0.0, "anthropic")] == ["backup"]
    assert table_rows(model, 0.0, "nothing") == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, MISSING),
        (float("inf"), MISSING),
        (0.0, "0s"),
        (0.2, "1s"),
        (59.0, "59s"),
        (60.0, "1m00s"),
        (245.0, "4m05s"),
        (3600.0, "1h00m"),
        (7380.0, "2h03m"),
        (3 * 86400 + 4 * 3600, "3d04h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", None),
        ("   ", None),
        ("300", 300.0),
        ("90s", 90.0),
        ("5m", 300.0),
        (" 1.5H ", 5400.0),
        ("2d", 172800.0),
        ("366d", 366 * 86400.0),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "m", "-3", "0", "367d", "nan", "inf", "1e400"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_log_cells_use_the_event_time_or_now(utc: None) -> None:
    line = LogLine(wall=1_700_000_000.25, endpoint="a", text="closed → open", style="bold red")
    assert log_cells(line, 0.0) == (
        Cell("22:13:20.250", "dim"),
        Cell("  a", "bold"),
        Cell("  closed → open", "bold red"),
    )
    local = LogLine(wall=None, endpoint=None, text="connected")
    assert log_cells(local, 1_700_000_001.0)[0].text == format_clock(1_700_000_001.0)
    assert len(log_cells(local, 0.0)) == 2


# --- properties -----------------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "c", "d"])
_states = st.sampled_from(["closed", "open", "half_open", "forced_open", "disabled"])
_frames = st.one_of(
    st.builds(
        lambda names: stats(*(endpoint(n) for n in dict.fromkeys(names))),
        st.lists(_names, max_size=4),
    ),
    st.builds(
        lambda name, a, b, until: transition(name, a, b, open_until_in=until),
        _names,
        _states,
        _states,
        st.none() | st.floats(0, 1e6),
    ),
    st.builds(lambda name: proto.EndpointRemovedFrame(wall=1.0, endpoint=name), _names),
    st.builds(lambda name: proto.EndpointAddedFrame(wall=1.0, endpoint=name), _names),
)


@given(st.lists(_frames, max_size=30), st.floats(0, 1e6))
def test_rows_follow_the_last_stats_minus_removals(frames: list[Input], now: float) -> None:
    model = Model()
    expected: list[str] = []
    for frame in frames:
        model, _ = reduce(model, frame, now)
        if isinstance(frame, proto.StatsFrame):
            expected = [ep.name for ep in frame.endpoints]
        elif isinstance(frame, proto.EndpointRemovedFrame):
            expected = [n for n in expected if n != frame.endpoint]
    rows = table_rows(model, now)
    assert [row.key for row in rows] == expected
    assert all(len(row.cells) == len(COLUMNS) for row in rows)


# --- reconnect backoff (pure) -------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, multiplier=2.0)
    rng = random.Random(7)
    for retry, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (10_000, 8.0)]:
        delays = {backoff.delay(retry, rng) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays), (retry, delays)
        assert len(delays) > 1  # jittered: restarted servers are not stampeded
    with pytest.raises(ValueError):
        Backoff(initial=0)


# --- fitting the terminal -----------------------------------------------------------------------


def _wide_scene() -> Model:
    backup = endpoint(
        "anthropic-backup",
        state="open",
        consecutive_failures=5,
        failures=9,
        failure_rate=0.55,
        calls_in_window=20,
        open_until_in=25.0,
        limiter_utilization=0.97,
        in_flight=0,
        latency_p95=2.31,
        rejected=37,
    )
    dev = endpoint(
        "ollama-dev",
        state="disabled",
        until_reset=True,
        forced_reason="probe flaps",
        forced_by="cli:alice@127.0.0.1:50400",
    )
    model, _ = fold(Connected(welcome=welcome("operator", backup, dev)))
    return model


def _width(layout: ColumnLayout, rows: list[Row]) -> int:
    return sum(
        max(len(COLUMNS[i]), *(len(layout.cell(i, r.cells[i]).text) for r in rows)) + 2
        for i in layout.columns
    )


def test_80_columns_keep_state_failures_latency_and_in_flight() -> None:
    rows = table_rows(_wide_scene(), 100.0)
    layout = fit_columns(rows, 80)
    assert {"ENDPOINT", "STATE", "FAILS", "P95", "IN-FLIGHT"} <= set(layout.titles)
    assert "PROVIDER" not in layout.titles
    assert list(layout.titles) == [t for t in DISPLAY_ORDER if t in layout.titles]
    assert _width(layout, rows) <= 80


def test_a_wide_terminal_shows_every_column_and_the_whole_note() -> None:
    rows = table_rows(_wide_scene(), 100.0)
    layout = fit_columns(rows, 220)
    assert layout.titles == DISPLAY_ORDER
    note = COLUMNS.index("NOTE")
    texts = [layout.cell(note, r.cells[note]).text for r in rows]
    assert "probe flaps by cli:alice@127.0.0.1:50400" in texts


def test_columns_collapse_in_priority_order() -> None:
    rows = table_rows(_wide_scene(), 100.0)

    def need(title: str) -> int:
        i = COLUMNS.index(title)
        return max(len(title), *(len(r.cells[i].text) for r in rows)) + 2

    for width in range(10, 200):
        shown = fit_columns(rows, width).titles
        assert "ENDPOINT" in shown  # never an empty table
        hidden = [t for t in COLUMN_PRIORITY if t not in shown]
        if not hidden:
            continue
        # Past the first column that did not fit, only narrower ones squeezed in.
        first = COLUMN_PRIORITY.index(hidden[0])
        for title in COLUMN_PRIORITY[first + 1 :]:
            if title in shown:
                assert need(title) < need(hidden[0]), (width, title, hidden[0])
    assert fit_columns(rows, 10).titles == ("ENDPOINT",)


def test_a_long_note_is_shortened_to_the_width_left() -> None:
    forced = endpoint("a", state="forced_open", forced_reason="x" * 500)
    model, _ = fold(Connected(welcome=welcome("operator", forced)))
    rows = table_rows(model, 100.0)
    layout = fit_columns(rows, 160)
    assert "NOTE" in layout.titles
    assert _width(layout, rows) <= 160
    note = COLUMNS.index("NOTE")
    assert layout.cell(note, rows[0].cells[note]).text.endswith("\N{HORIZONTAL ELLIPSIS}")


def test_the_last_serving_endpoint_is_recognised() -> None:
    model, _ = fold(
        Connected(
            welcome=welcome(
                "operator",
                endpoint("a", state="open"),
                endpoint("b"),
                endpoint("c", state="forced_open"),
            )
        )
    )
    assert model.is_last_serving("b")
    assert not model.is_last_serving("a")  # it does not serve now anyway
    assert not model.is_last_serving("zzz")
    for serving in ("closed", "half_open", "disabled"):
        model, _ = fold(stats(endpoint("a", state=serving), endpoint("b")), model=model)
        assert not model.is_last_serving("b"), serving
    model, _ = fold(Connected(welcome=welcome("operator", endpoint("only"))))
    assert model.is_last_serving("only")
