"""The console's fleet mode: every node of the server's fleet in one table.

``rakka-trio tui URL --fleet`` (or ``s`` to toggle node/fleet scope) connects with
``"scope": "fleet"``: the table then has one row per endpoint across the fleet (state counts
such as ``open on 3/20``, sums and medians over the nodes, the fleet override), Enter on a row
lists each node's state for that endpoint, and ``f``/``r``/``d`` act on every node (the log
says which nodes acked and which are missing).

The row and header builders are pure functions of the fleet snapshot and a Unix time; the two
widgets draw them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from rakka_trio._control import _protocol as proto

from ._model import LinkStatus, Model
from ._text import (
    MISSING,
    STATE_STYLES,
    display_url,
    format_duration,
    format_latency,
    format_percent,
    safe_text,
)
from ._view import Cell, Row, status_cells

__all__ = [
    "FLEET_COLUMNS",
    "NODE_COLUMNS",
    "FleetNodesScreen",
    "FleetTable",
    "fleet_empty_text",
    "fleet_rows",
    "fleet_status_cells",
    "node_rows",
]

FLEET_COLUMNS: Final = (
    "ENDPOINT",
    "FLEET STATE",
    "NODES",
    "REQ/S",
    "ERR%",
    "IN-FLIGHT",
    "P95",
    "P99 MAX",
    "REJECTED",
    "OVERRIDE",
)
"""Columns of the fleet table (:attr:`Row.cells` of :func:`fleet_rows` follows it)."""

NODE_COLUMNS: Final = (
    "NODE",
    "STATE",
    "UNTIL",
    "REQ/S",
    "ERR/S",
    "IN-FLIGHT",
    "P95",
    "REJECTED",
    "NOTE",
)
"""Columns of the per-node drill-down (:func:`node_rows`)."""

_OVERRIDE_WIDTH: Final = 40
_NOTE_WIDTH: Final = 40


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _summary_style(ep: proto.FleetEndpointState) -> str:
    if ep.open_on and ep.open_on >= ep.nodes:
        return STATE_STYLES["forced_open" if ep.override else "open"]
    if ep.open_on:
        return "bold yellow"
    return STATE_STYLES["closed"] if ep.nodes else "dim"


def _states(ep: proto.FleetEndpointState) -> str:
    if not ep.states:
        return MISSING
    return ", ".join(f"{n} {state}" for state, n in sorted(ep.states.items()))


def _override(ep: proto.FleetEndpointState, wall_now: float) -> Cell:
    o = ep.override
    if o is None:
        return Cell("")
    left = "until reset" if o.until is None else format_duration(max(0.0, o.until - wall_now))
    text = f"{o.command} {left} by {o.actor}" + (f": {o.reason}" if o.reason else "")
    return Cell(_short(safe_text(text), _OVERRIDE_WIDTH), "magenta")


def fleet_rows(snapshot: proto.FleetSnapshot, filter_text: str, wall_now: float) -> list[Row]:
    """One row per endpoint of the fleet (narrowed by every word of ``filter_text`` against
    the name and the states), at Unix time ``wall_now``."""
    words = filter_text.lower().split()
    rows = []
    for ep in snapshot.endpoints:
        haystack = f"{ep.name} {ep.summary} {' '.join(ep.states)}".lower()
        if not all(word in haystack for word in words):
            continue
        cells = (
            Cell(safe_text(ep.name), "bold"),
            Cell(ep.summary, _summary_style(ep)),
            Cell(_states(ep)),
            Cell(f"{ep.requests_per_second:g}"),
            Cell(format_percent(ep.error_rate), "red" if (ep.error_rate or 0) >= 0.1 else ""),
            Cell(str(ep.in_flight) + (f" +{ep.queue_depth}" if ep.queue_depth else "")),
            Cell(format_latency(ep.latency_p95)),
            Cell(format_latency(ep.latency_p99_max)),
            Cell(str(ep.rejected), "magenta" if ep.rejected else ""),
            _override(ep, wall_now),
        )
        rows.append(Row(key=ep.name, cells=cells))
    return rows


def node_rows(endpoint: proto.FleetEndpointState, wall_now: float) -> list[tuple[Cell, ...]]:
    """Each node's state of ``endpoint`` (the drill-down), at Unix time ``wall_now``."""
    rows: list[tuple[Cell, ...]] = []
    for fig in endpoint.per_node:
        if fig.until_reset:
            until = Cell("until reset", STATE_STYLES.get(fig.state, ""))
        elif fig.open_until_wall is not None:
            until = Cell(format_duration(max(0.0, fig.open_until_wall - wall_now)))
        else:
            until = Cell(MISSING)
        note = " ".join(
            part for part in (fig.forced_reason, f"by {fig.forced_by}" if fig.forced_by else "")
            if part
        )  # fmt: skip
        rows.append(
            (
                Cell(safe_text(fig.node) + (" (stale)" if fig.stale else ""), "bold"),
                Cell(fig.state, STATE_STYLES.get(fig.state, "")),
                until,
                Cell(f"{fig.requests_per_second:g}"),
                Cell(f"{fig.errors_per_second:g}", "red" if fig.errors_per_second else ""),
                Cell(str(fig.in_flight) + (f" +{fig.queue_depth}" if fig.queue_depth else "")),
                Cell(format_latency(fig.latency_p95)),
                Cell(str(fig.rejected), "magenta" if fig.rejected else ""),
                Cell(_short(safe_text(note), _NOTE_WIDTH)),
            )
        )
    return rows


def fleet_status_cells(model: Model, url: str, now: float) -> tuple[Cell, ...]:
    """The header in fleet mode: the fleet, its nodes and the server's link to Redis."""
    fleet = model.fleet
    if fleet is None or model.link.status is not LinkStatus.CONNECTED:
        return status_cells(model, url, now)
    role = model.link.role or "?"
    cells = [
        Cell(" rakka-trio ", "bold reverse"),
        Cell(f" {display_url(url)}  "),
        Cell("● connected", "bold green"),
        Cell(f"  as {role}", "bold" if role == "operator" else "bold yellow"),
        Cell(f"  FLEET {safe_text(fleet.fleet)}", "bold magenta"),
        Cell(f"  {len(fleet.nodes)} nodes  {len(fleet.endpoints)} endpoints"),
    ]
    stale = sum(1 for node in fleet.nodes if node.stale)
    if stale:
        cells.append(Cell(f"  {stale} stale", "bold yellow"))
    if not fleet.link_up:
        cells.append(Cell(f"  {safe_text(fleet.link_status)}", "bold red"))
    return tuple(cells)


def fleet_empty_text(model: Model, filter_text: str) -> str:
    """What the space under the fleet table says when no row is shown ("" otherwise)."""
    fleet = model.fleet
    if fleet is None or fleet_rows(fleet, filter_text, 0.0):
        return ""
    if filter_text and fleet.endpoints:
        return f"no endpoint matches the filter {safe_text(filter_text)!r}"
    return "no node of the fleet has published yet (Enter on a row lists its nodes)"


def _text(cell: Cell) -> Text:
    # Text objects, never strings: Textual would parse a string as markup.
    return Text(cell.text, style=cell.style)


def _fill(table: DataTable[Text], columns: Sequence[str], rows: Sequence[Row]) -> None:
    """Redraw ``table`` with ``rows``, keeping the cursor on the same key."""
    selected = None
    if table.row_count:
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    if not table.columns:
        for title in columns:
            table.add_column(title, key=title)
    table.clear()
    for row in rows:
        table.add_row(*(_text(cell) for cell in row.cells), key=row.key)
    keys = [row.key for row in rows]
    if selected in keys:
        table.move_cursor(row=keys.index(selected))


class FleetTable(DataTable[Text]):
    """The fleet table of the main screen (shown in fleet mode, in place of the endpoint
    table). Enter on a row opens :class:`FleetNodesScreen` for it."""

    def __init__(self, snapshot: Callable[[], proto.FleetSnapshot | None], **kw: str) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)  # type: ignore[arg-type]
        self._snapshot = snapshot

    def show(self, snapshot: proto.FleetSnapshot, filter_text: str, wall_now: float) -> None:
        """Draw ``snapshot``."""
        _fill(self, FLEET_COLUMNS, fleet_rows(snapshot, filter_text, wall_now))

    def selected(self) -> str | None:
        """The endpoint under the cursor, if any."""
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return None if key is None else str(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: each node's state of that endpoint."""
        event.stop()
        if event.row_key.value is not None:
            self.app.push_screen(FleetNodesScreen(str(event.row_key.value), self._snapshot))


class FleetNodesScreen(ModalScreen[None]):
    """One endpoint on every node of the fleet, refreshed as stats arrive."""

    DEFAULT_CSS = """
    FleetNodesScreen {
        align: center middle;
    }
    FleetNodesScreen > Vertical {
        width: 100%;
        max-width: 140;
        height: auto;
        max-height: 100%;
        padding: 1 2;
        border: thick $accent;
        background: $surface;
    }
    FleetNodesScreen .title {
        text-style: bold;
        margin-bottom: 1;
    }
    FleetNodesScreen DataTable {
        height: auto;
        max-height: 30;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "Close"),
    ]
    _REFRESH: Final = 0.5

    def __init__(
        self,
        endpoint: str,
        snapshot: Callable[[], proto.FleetSnapshot | None],
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._snapshot = snapshot
        self._wall_clock = wall_clock or time.time

    def compose(self) -> ComposeResult:
        """Title, the per-node table, a summary line."""
        with Vertical():
            yield Label(Text(f"{safe_text(self.endpoint)} on every node"), classes="title")
            yield DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
            yield Static("", id="summary")

    def on_mount(self) -> None:
        """Draw now and as stats arrive."""
        table = self.query_one("#nodes", DataTable)
        for title in NODE_COLUMNS:
            table.add_column(title, key=title)
        table.focus()
        self.refresh_rows()
        self.set_interval(self._REFRESH, self.refresh_rows)

    def _endpoint(self) -> proto.FleetEndpointState | None:
        snapshot = self._snapshot()
        if snapshot is None:
            return None
        return next((ep for ep in snapshot.endpoints if ep.name == self.endpoint), None)

    def rows(self) -> list[tuple[Cell, ...]]:
        """The rows as drawn now."""
        found = self._endpoint()
        return [] if found is None else node_rows(found, self._wall_clock())

    def refresh_rows(self) -> None:
        """Redraw from the latest fleet snapshot."""
        table: DataTable[Text] = self.query_one("#nodes", DataTable)
        _fill(table, NODE_COLUMNS, [Row(key=row[0].text, cells=row) for row in self.rows()])
        found = self._endpoint()
        if found is None:
            summary = "no node publishes this endpoint now"
        else:
            override = ""
            if found.override is not None:
                override = f"; fleet override: {found.override.command} by {found.override.actor}"
            summary = f"{found.summary}{override}  (Esc or Enter closes)"
        self.query_one("#summary", Static).update(Text(safe_text(summary)))

    def action_close(self) -> None:
        """Back to the fleet table."""
        self.dismiss(None)
