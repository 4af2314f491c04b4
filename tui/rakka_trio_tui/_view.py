"""What the screen shows, computed from the :class:`~._model.Model`: table rows, the header
line, log lines, the placeholder under an empty table, and which columns fit the terminal.

Pure functions of the model, ``now`` (a monotonic time) and the terminal width: cells are plain
text with Rich style names, so every view is deterministic under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs
from rich.cells import cell_len

from rakka_trio._control import _protocol as proto

from ._incident_view import error_piece, limit_piece, rate_piece, trend_piece
from ._model import EndpointView, LinkState, LinkStatus, LogLine, Model
from ._text import (
    MISSING,
    STATE_STYLES,
    display_url,
    format_clock,
    format_duration,
    format_latency,
    format_percent,
    safe_text,
)

__all__ = [
    "COLUMNS",
    "COLUMN_PRIORITY",
    "DISPLAY_ORDER",
    "Cell",
    "ColumnLayout",
    "Row",
    "empty_text",
    "fit_columns",
    "log_cells",
    "matches_filter",
    "status_cells",
    "table_rows",
]

COLUMNS: Final = (
    "ENDPOINT",
    "PROVIDER",
    "STATE",
    "FAILS",
    "FAIL RATE",
    "OPEN UNTIL",
    "LIMIT",
    "IN-FLIGHT",
    "P95",
    "TRIPS",
    "REJECTED",
    "NOTE",
    "ERR%",
    "REQ/S",
    "TREND",
)
"""Column titles of the endpoint table (:attr:`Row.cells` follows this order; the incident
columns came last so the others kept their places)."""

DISPLAY_ORDER: Final = (
    "ENDPOINT",
    "PROVIDER",
    "STATE",
    "FAILS",
    "FAIL RATE",
    "ERR%",
    "REQ/S",
    "TREND",
    "OPEN UNTIL",
    "LIMIT",
    "IN-FLIGHT",
    "P95",
    "TRIPS",
    "REJECTED",
    "NOTE",
)
"""The order in which the shown columns are drawn, left to right."""
_POSITION: Final = {COLUMNS.index(title): i for i, title in enumerate(DISPLAY_ORDER)}

_NOTE: Final = COLUMNS.index("NOTE")

COLUMN_PRIORITY: Final = (
    "ENDPOINT",
    "STATE",
    "FAILS",
    "P95",
    "IN-FLIGHT",
    "ERR%",
    "OPEN UNTIL",
    "TREND",
    "REJECTED",
    "NOTE",
    "FAIL RATE",
    "LIMIT",
    "TRIPS",
    "REQ/S",
    "PROVIDER",
)
"""The order in which columns claim the terminal's width: on a narrow terminal the last ones
are hidden first (:func:`fit_columns`)."""

CELL_PADDING: Final = 1
"""Blank cells on each side of a column (Textual's ``DataTable`` default)."""

_NAME_WIDTH: Final = 32  # longer endpoint names are shortened with an ellipsis
_NOTE_CLAIM: Final = 48  # NOTE claims up to this much by priority, then any width left over
_TIMED_STATES: Final = frozenset({"open", "half_open", "forced_open", "disabled"})
_STALE_AFTER_INTERVALS: Final = 3.0  # missed stats frames before the header says "stale"
_STALE_MINIMUM: Final = 5.0  # seconds; a fast stats interval should not make the header flap


@attrs.frozen
class Cell:
    """A piece of text and the Rich style to show it in."""

    text: str
    style: str = ""


@attrs.frozen
class Row:
    """One table row: ``key`` is the endpoint name; ``cells`` follow :data:`COLUMNS`."""

    key: str
    cells: tuple[Cell, ...]


def _shorten(text: str, width: int) -> str:
    if cell_len(text) <= width:
        return text
    while cell_len(text) > width - 1:
        text = text[:-1]
    return text + "\N{HORIZONTAL ELLIPSIS}"


def matches_filter(state: proto.EndpointState, text: str) -> bool:
    """True when every word of ``text`` occurs (case-insensitively) in the endpoint's name,
    provider or state."""
    haystack = f"{state.name} {state.provider} {state.state}".lower()
    return all(word in haystack for word in text.lower().split())


def _until_cell(view: EndpointView, now: float) -> Cell:
    ep = view.state
    if ep.state not in _TIMED_STATES:
        return Cell(MISSING)
    if ep.until_reset:
        return Cell("until reset", STATE_STYLES.get(ep.state, ""))
    if view.deadline is None:
        return Cell(MISSING)
    return Cell(format_duration(max(0.0, view.deadline - now)), STATE_STYLES.get(ep.state, ""))


def _fails_cell(ep: proto.EndpointState) -> Cell:
    text = str(ep.consecutive_failures)
    if ep.failures != ep.consecutive_failures:
        text += f" ({ep.failures})"
    return Cell(text, "red" if ep.consecutive_failures else "")


def _rate_cell(ep: proto.EndpointState) -> Cell:
    if ep.failure_rate is None:
        return Cell(MISSING)
    style = "red" if ep.failure_rate >= 0.5 else "yellow" if ep.failure_rate >= 0.1 else ""
    return Cell(f"{format_percent(ep.failure_rate)} of {ep.calls_in_window}", style)


def _in_flight_cell(ep: proto.EndpointState) -> Cell:
    if ep.in_flight is None:
        return Cell(MISSING)
    text = str(ep.in_flight)
    if ep.queue_depth:
        text += f" +{ep.queue_depth} queued"
    return Cell(text)


def _note_cell(ep: proto.EndpointState) -> Cell:
    parts = []
    if ep.forced_reason:
        parts.append(ep.forced_reason)
    if ep.forced_by:
        parts.append(f"by {ep.forced_by}")
    return Cell(safe_text(" ".join(parts)) if parts else "")


def table_rows(model: Model, now: float, filter_text: str = "") -> list[Row]:
    """The endpoint table at monotonic time ``now``, narrowed by ``filter_text``."""
    rows = []
    for view in model.endpoints:
        ep = view.state
        if filter_text and not matches_filter(ep, filter_text):
            continue
        cells = (
            Cell(_shorten(safe_text(ep.name), _NAME_WIDTH), "bold"),
            Cell(safe_text(ep.provider)),
            Cell(safe_text(ep.state), STATE_STYLES.get(ep.state, "")),
            _fails_cell(ep),
            _rate_cell(ep),
            _until_cell(view, now),
            Cell(*limit_piece(ep)),
            _in_flight_cell(ep),
            Cell(format_latency(ep.latency_p95)),
            Cell(str(ep.trips)),
            # Calls the breaker failed fast: during a drill this is the traffic moving away.
            Cell(str(ep.rejected), "magenta" if ep.rejected else ""),
            _note_cell(ep),
            Cell(*error_piece(ep)),
            Cell(*rate_piece(ep)),
            Cell(*trend_piece(ep)),
        )
        rows.append(Row(key=ep.name, cells=cells))
    return rows


def status_cells(model: Model, url: str, now: float) -> tuple[Cell, ...]:
    """The header line: where we are connected, the link status, the role and a hint."""
    link = model.link
    cells = [Cell(" rakka-trio ", "bold reverse"), Cell(f" {display_url(url)}  ")]
    if link.status is LinkStatus.CONNECTING:
        cells.append(Cell("◌ connecting…", "yellow"))
    elif link.status is LinkStatus.FAILED:
        text = f"✖ not connected (not retrying): {link.error or 'refused'}"
        cells.append(Cell(text, "bold red"))
    elif link.status is LinkStatus.RECONNECTING:
        if link.retry_at is not None and link.retry_at > now:
            wait = f" in {format_duration(link.retry_at - now)}"
        else:
            wait = "…"
        text = f"◌ reconnecting{wait} (retry {link.attempt})"
        cells.append(Cell(text, "bold yellow"))
        if link.error:
            cells.append(Cell(f"  {link.error}", "red"))
    else:
        cells.append(Cell("● connected", "bold green"))
        role = link.role or "?"
        cells.append(Cell(f"  as {role}", "bold" if role == "operator" else "bold yellow"))
        # The node id (often host:pid) last: on a narrow terminal it is what gets cut.
        cells.append(Cell(f"  {len(model.endpoints)} endpoints  node {link.node_id}"))
        if link.role != "operator":
            hint = "  read-only: commands need an operator token (--token / RAKKA_TOKEN)"
            cells.append(Cell(hint, "yellow"))
        stale = _stale_for(link, now)
        if stale is not None:
            cells.append(Cell(f"  no update for {format_duration(stale)}", "bold yellow"))
    return tuple(cells)


def empty_text(model: Model, filter_text: str = "") -> str:
    """What the space under the table says when no row is shown ("" when rows are shown)."""
    if any(matches_filter(v.state, filter_text) for v in model.endpoints):
        return ""
    if filter_text and model.endpoints:
        return f"no endpoint matches the filter {safe_text(filter_text)!r}"
    status = model.link.status
    if status is LinkStatus.CONNECTED:
        return "the server has no endpoints"
    if status is LinkStatus.FAILED:
        # Gave up for good (a refused token): waiting would be a lie.
        return "no data: the console stopped trying to connect (see the log); q quits"
    if status is LinkStatus.RECONNECTING:
        return "no data yet: reconnecting to the server…"
    return "waiting for the server…"


@attrs.frozen
class ColumnLayout:
    """The table's columns for one terminal width: ``columns`` are indexes into
    :data:`COLUMNS` in display order; NOTE text wider than ``note_width`` is shortened (the
    full reason is in the event log)."""

    columns: tuple[int, ...]
    note_width: int

    @property
    def titles(self) -> tuple[str, ...]:
        """The titles of the shown columns."""
        return tuple(COLUMNS[i] for i in self.columns)

    def cell(self, index: int, cell: Cell) -> Cell:
        """``cell`` of column ``index`` as drawn."""
        if index == _NOTE and cell_len(cell.text) > self.note_width:
            return Cell(_shorten(cell.text, self.note_width), cell.style)
        return cell


def fit_columns(rows: Sequence[Row], width: int) -> ColumnLayout:
    """The columns to show in ``width`` terminal cells.

    Columns claim the width in :data:`COLUMN_PRIORITY` order, each as wide as its title or
    widest cell plus padding (NOTE at most ``_NOTE_CLAIM``); one that does not fit is hidden
    and the next may still fit. Width left over widens NOTE up to its longest text. So an
    80-column terminal keeps state, failures, p95 latency, in-flight calls and the recent
    error rate, and the provider is the first column to go. The endpoint name is always
    shown.
    """
    natural = [
        max([cell_len(title), *(cell_len(row.cells[i].text) for row in rows)])
        for i, title in enumerate(COLUMNS)
    ]
    chosen: list[int] = []
    used = 0
    note_width = min(natural[_NOTE], _NOTE_CLAIM)
    for name in COLUMN_PRIORITY:
        index = COLUMNS.index(name)
        need = (note_width if index == _NOTE else natural[index]) + 2 * CELL_PADDING
        if not chosen or used + need <= width:
            chosen.append(index)
            used += need
    if _NOTE in chosen:
        note_width = min(natural[_NOTE], note_width + max(0, width - used))
    return ColumnLayout(
        columns=tuple(sorted(chosen, key=_POSITION.__getitem__)), note_width=note_width
    )


def _stale_for(link: LinkState, now: float) -> float | None:
    if link.last_frame_at is None or link.stats_interval is None:
        return None
    silent = now - link.last_frame_at
    limit = max(_STALE_MINIMUM, _STALE_AFTER_INTERVALS * link.stats_interval)
    return silent if silent > limit else None


def log_cells(line: LogLine, wall_now: float) -> tuple[Cell, ...]:
    """One log line as cells: the time (``wall_now`` for local events), the endpoint, the text."""
    cells = [Cell(format_clock(line.wall if line.wall is not None else wall_now), "dim")]
    if line.endpoint:
        cells.append(Cell(f"  {line.endpoint}", "bold"))
    cells.append(Cell(f"  {line.text}", line.style))
    return tuple(cells)
