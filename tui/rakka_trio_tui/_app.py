"""The Textual application: endpoint table, event log, header and operator commands.

Data flow, one direction at a time:

* Trio → screen: the :class:`~._link.ControlLink` (Trio, guest mode on this App's asyncio
  loop) emits frames and connection events; each becomes a :class:`LinkEvent` message, is
  folded into the model by the pure :func:`~._model.reduce`, and the widgets are redrawn
  from the model.
* screen → Trio: a confirmed dialog produces a :class:`~._model.CommandRequest`, handed to
  the link with :meth:`~._guest.TrioGuest.call_soon`; the answer comes back as a
  :class:`LinkEvent` carrying a :class:`~._model.CommandDone`.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, ClassVar

import attrs
from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from rakka_trio._credentials import Secret
from rakka_trio._redact import redact

from ._fleet import FleetTable, fleet_empty_text, fleet_status_cells
from ._guest import TrioGuest
from ._incident import IncidentPanel
from ._incident_view import last_serving_warning
from ._link import Backoff, ClientLike, Connector, ControlLink
from ._model import CommandDone, CommandRequest, CommandSent, LinkStatus, LogLine, Model, reduce
from ._model import Input as ModelInput
from ._screens import CommandScreen, ConfirmScreen, HelpScreen
from ._text import display_url, safe_text
from ._view import (
    COLUMNS,
    Cell,
    ColumnLayout,
    Row,
    empty_text,
    fit_columns,
    log_cells,
    status_cells,
    table_rows,
)
from ._widgets import DEFAULT_CLIENT_NAME, FilterInput, LinkEvent, cells_text, default_connector

if TYPE_CHECKING:
    import asyncio

    import outcome

__all__ = ["DEFAULT_CLIENT_NAME", "LinkEvent", "RakkaTui", "default_connector"]

_TICK = 0.5  # seconds between redraws of countdowns and the header
_LOG_LINES = 5000
_COMMAND_KEYS = frozenset({"f", "r", "d"})
_COMMAND_ACTIONS = frozenset({"force_open", "reset", "disable"})
_TABLE_HEIGHT_SHARE = 0.6  # the table's max-height in the CSS below
_SCROLLBAR_WIDTH = 2


class RakkaTui(App[int]):
    """Live console of one rakka-trio control server.

    ``url`` is shown in the header (without credentials). ``connect`` opens a connection
    (default: :func:`rakka_trio.open_control_client` with ``token``); tests inject a fake.
    ``clock`` (monotonic) and ``wall_clock`` (Unix time) drive countdowns and local log
    times; ``backoff`` and ``rng`` shape reconnection. ``exit_when`` is polled twice a second
    (from this thread; it must be quick and thread-safe): when it returns a message the console
    closes and prints it; ``rakka-trio demo --tui`` uses it to close when the demo ends rather
    than reconnect to a server that is gone.

    The token is only ever handed to the connector: it is never drawn, logged or put in an
    error message (error texts are passed through the secret redactor first).
    """

    TITLE = "rakka-trio"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "force_open", "Force open"),
        Binding("r", "reset", "Reset"),
        Binding("d", "disable", "Disable"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("s", "toggle_scope", "Node/fleet", show=False),
        Binding("q", "quit", "Quit"),
        # Textual's default Ctrl-C only tells you to press Ctrl-Q; operators expect it to quit.
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]
    CSS = """
    #status {
        dock: top;
        height: 1;
        background: $panel;
    }
    #filter {
        display: none;
    }
    #endpoints {
        height: auto;
        max-height: 60%;
    }
    #endpoints.stale, #fleet.stale {
        opacity: 60%;
    }
    #fleet {
        display: none;
        height: auto;
        max-height: 60%;
    }
    #empty {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    #log-title {
        height: 1;
        padding: 0 1;
        background: $panel;
        text-style: bold;
    }
    #log {
        height: 1fr;
    }
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | Secret | None = None,
        connect: Connector | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        ssl_context: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        exit_when: Callable[[], str | None] | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__()
        secret = Secret(token) if isinstance(token, str) else token  # registers it for redact
        self._url = url
        self._shown_url = display_url(url)
        self._clock = clock
        self._wall_clock = wall_clock
        self._exit_when = exit_when
        self._model = Model()
        self._filter = ""
        self._row_keys: list[str] = []
        self._rendered: dict[str, tuple[Cell, ...]] = {}
        self._widths = [0] * len(COLUMNS)
        self._layout = ColumnLayout(columns=(), note_width=0)
        self._could_command = False
        self._stopping = False
        self._outcome_taken = False
        self._mounted = False
        self._redraw_pending = False
        self._guest = TrioGuest()
        # "node" or "fleet": asked of the server at each connection; s toggles it.
        self._scope = "fleet" if scope == "fleet" else "node"

        def fleet_aware() -> AbstractAsyncContextManager[ClientLike]:
            fleet = "fleet" if self._scope == "fleet" else None
            return default_connector(
                url, secret, client_name=client_name, ssl_context=ssl_context, scope=fleet
            )()

        connector = connect or fleet_aware
        self._link = ControlLink(connector, self._emit, backoff=backoff, rng=rng, scrub=self._scrub)

    # --- state seen by tests and the CLI ------------------------------------------------------

    @property
    def model(self) -> Model:
        """The current model (what the screen shows)."""
        return self._model

    @property
    def filter_text(self) -> str:
        """The table filter in effect."""
        return self._filter

    @property
    def link_running(self) -> bool:
        """True while the Trio run carrying the connection is alive."""
        return self._guest.running

    def visible_rows(self) -> list[Row]:
        """The table's rows as they are drawn now."""
        return table_rows(self._model, self._clock(), self._filter)

    # --- composition and lifecycle ----------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Header line, filter box, endpoint table, event log, key bindings."""
        yield Static(id="status")
        yield FilterInput(
            placeholder="filter: endpoint, provider or state (Esc clears)", id="filter"
        )
        yield DataTable(id="endpoints", cursor_type="row", zebra_stripes=True)
        yield FleetTable(lambda: self._model.fleet, id="fleet")
        yield Static("", id="empty")
        yield IncidentPanel(id="incident")
        yield Static("Events", id="log-title")
        yield RichLog(id="log", max_lines=_LOG_LINES, wrap=False, markup=False, highlight=False)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        """Set up the table, start the redraw timer and the Trio link."""
        self.query_one("#endpoints", DataTable).focus()
        self._mounted = True
        self._redraw()
        self.set_interval(_TICK, self._tick)
        self._guest.start(self._link.run)
        self._guest.finished.add_done_callback(self._guest_finished)

    async def on_unmount(self) -> None:
        """Cancel the Trio link and wait until it has closed its connection."""
        self._stopping = True
        await self._guest.stop()
        result = self._take_outcome()
        if result is not None:
            # We cancelled it: a clean cancellation is a Value; anything else is a bug in the
            # link, raised here so it is not lost.
            result.unwrap()

    def _guest_finished(self, future: asyncio.Future[outcome.Outcome[None]]) -> None:
        # The Trio run ended. If we did not stop it, the link gave up (a refused token,
        # already on screen) or crashed.
        if self._stopping or future.cancelled():
            return
        result = self._take_outcome()
        if result is None:
            return
        try:
            result.unwrap()
        except Exception as exc:
            # A bug in the link, not a network problem (those are retried): stop loudly.
            self.exit(
                return_code=1,
                message=Text(
                    f"rakka-trio tui: the connection task failed: {self._scrub(repr(exc))}"
                ),
            )

    def _take_outcome(self) -> outcome.Outcome[None] | None:
        # An outcome can be unwrapped once; whoever sees it first (the done-callback or
        # on_unmount) owns it.
        if self._outcome_taken or not self._guest.started:
            return None
        finished = self._guest.finished
        if not finished.done() or finished.cancelled():
            return None
        self._outcome_taken = True
        return finished.result()

    # --- Trio → screen ----------------------------------------------------------------------

    def _emit(self, event: ModelInput) -> None:
        # Called by Trio code, on this thread: post_message only queues.
        self.post_message(LinkEvent(event))

    def _scrub(self, text: str) -> str:
        if self._url != self._shown_url:
            # Error messages quote the URL as given, or already redacted (RakkaError
            # redacts registered secrets); show both as the credential-free form.
            for quoted in (self._url, redact(self._url)):
                text = text.replace(quoted, self._shown_url)
        return redact(text)

    def on_link_event(self, message: LinkEvent) -> None:
        """Fold the event into the model and redraw."""
        if not self._drawable:
            return  # shutting down: the widgets are already gone
        self._apply(message.event)
        event = message.event
        if isinstance(event, CommandDone):
            # The endpoint name is the server's text: shown escaped, never as markup.
            endpoint = safe_text(event.request.endpoint)
            if event.ok:
                self.notify(
                    f"{endpoint}: {safe_text(event.state or 'done')}",
                    title=event.request.kind,
                    markup=False,
                )
            else:
                self.notify(
                    safe_text(self._scrub(event.error or "failed")),
                    title=f"{event.request.kind} {endpoint} failed",
                    severity="error",
                    markup=False,
                )

    def _apply(self, event: ModelInput) -> None:
        self._model, lines = reduce(self._model, event, self._clock())
        if lines:
            log = self.query_one("#log", RichLog)
            wall = self._wall_clock()
            for line in lines:
                log.write(
                    cells_text([Cell(redact(c.text), c.style) for c in log_cells(line, wall)])
                )
        # One redraw for a burst of frames (a thousand endpoints' worth of transitions must
        # not rebuild the table a thousand times).
        if not self._redraw_pending:
            self._redraw_pending = True
            self.call_later(self._redraw)

    @property
    def _drawable(self) -> bool:
        # Between mount and the start of shutdown (Textual clears _running first, then
        # removes the widgets, then still delivers queued messages and timer ticks).
        return self._mounted and self.is_running

    def _tick(self) -> None:
        if self._exit_when is not None and self._drawable:
            message = self._exit_when()
            if message is not None:
                self.exit(return_code=0, message=Text(message))
                return
        self._redraw()

    def _redraw(self) -> None:
        self._redraw_pending = False
        if not self._drawable:
            return
        now = self._clock()
        header = fleet_status_cells if self._model.fleet is not None else status_cells
        status = [Cell(redact(c.text), c.style) for c in header(self._model, self._url, now)]
        self.query_one("#status", Static).update(cells_text(status))
        self._redraw_table(now)
        self.query_one(IncidentPanel).show(self._model, self.selected_endpoint())
        can_command = self._model.can_command
        if can_command != self._could_command:
            self._could_command = can_command
            self.refresh_bindings()

    def _table_width(self, rows: int) -> int:
        # The table spans the screen; a vertical scrollbar appears when the rows outgrow the
        # table's share of the height, and then takes its width from the columns.
        width = self.size.width
        if rows + 1 > self.size.height * _TABLE_HEIGHT_SHARE:
            width -= _SCROLLBAR_WIDTH
        return width

    def _redraw_table(self, now: float) -> None:
        table = self.query_one("#endpoints", DataTable)
        fleet = self.query_one("#fleet", FleetTable)
        if self._redraw_fleet(table, fleet):
            return
        rows = table_rows(self._model, now, self._filter)
        keys = [row.key for row in rows]
        layout = fit_columns(rows, self._table_width(len(rows)))
        table.set_class(self._model.link.status is not LinkStatus.CONNECTED, "stale")
        changed: list[tuple[str, int, Cell]] = []
        rebuild = keys != self._row_keys or layout != self._layout
        if not rebuild:
            for row in rows:
                before = self._rendered.get(row.key)
                for index in layout.columns:
                    cell = layout.cell(index, row.cells[index])
                    if before is None or before[index] != cell:
                        changed.append((row.key, index, cell))
                        # Wider than its column: let a rebuild size the columns once.
                        # (update_cell(update_width=True) re-measures the whole column per
                        # cell, which is quadratic in the number of rows.)
                        rebuild = rebuild or cell_len(cell.text) > self._widths[index]
        if rebuild:
            # Rows came or went, the filter or the width changed, or a column must grow:
            # rebuild, keeping the selection.
            selected = self.selected_endpoint()
            if layout.columns != self._layout.columns:
                # Narrow terminals hide the columns that matter least (see fit_columns).
                table.clear(columns=True)
                for index in layout.columns:
                    table.add_column(COLUMNS[index], key=COLUMNS[index])
            else:
                table.clear()
            for row in rows:
                cells = (cells_text([layout.cell(i, row.cells[i])]) for i in layout.columns)
                table.add_row(*cells, key=row.key)
            self._widths = [
                max([cell_len(title), *(cell_len(layout.cell(i, r.cells[i]).text) for r in rows)])
                for i, title in enumerate(COLUMNS)
            ]
            self._layout = layout
            if selected in keys:
                table.move_cursor(row=keys.index(selected))
        else:
            # Same rows: touch only the cells that changed, so the cursor and scroll stay.
            for key, index, cell in changed:
                table.update_cell(key, COLUMNS[index], cells_text([cell]))
        self._row_keys = keys
        self._rendered = {
            row.key: tuple(layout.cell(i, c) for i, c in enumerate(row.cells)) for row in rows
        }
        self.query_one("#empty", Static).update(Text(empty_text(self._model, self._filter)))

    @property
    def shown_columns(self) -> tuple[str, ...]:
        """Titles of the table columns on screen now (narrow terminals hide some)."""
        return self._layout.titles

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Show the breakdown of the endpoint under the cursor."""
        if self._drawable:
            self.query_one(IncidentPanel).show(self._model, self.selected_endpoint())

    def on_resize(self, event: events.Resize) -> None:
        """Fit the columns to the new width."""
        if self._drawable:
            self._redraw_table(self._clock())

    def selected_endpoint(self) -> str | None:
        """The endpoint under the table's cursor, if any."""
        if self._model.fleet is not None:
            return self.query_one("#fleet", FleetTable).selected()
        table = self.query_one("#endpoints", DataTable)
        if table.row_count == 0:
            return None
        row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return None if row_key.value is None else str(row_key.value)

    # --- bindings -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Command keys are greyed out (shown, not usable) unless we are a connected
        operator."""
        if action in _COMMAND_ACTIONS:
            return True if self._model.can_command else None
        return True

    def on_key(self, event: events.Key) -> None:
        """Say why a greyed-out command key does nothing."""
        if event.key in _COMMAND_KEYS and not self._model.can_command and self.screen.is_current:
            link = self._model.link
            if link.status is LinkStatus.CONNECTED:
                hint = "read-only connection (viewer): commands need an operator token"
            else:
                hint = "not connected: commands are available once the server is back"
            self.notify(hint, severity="warning", markup=False)

    def action_force_open(self) -> None:
        """Ask for duration and reason, then force the selected endpoint's breaker open."""
        self._ask("force_open")

    def action_disable(self) -> None:
        """Ask for duration and reason, then disable the selected endpoint's breaker."""
        self._ask("disable")

    def action_reset(self) -> None:
        """Confirm, then reset the selected endpoint's breaker."""
        endpoint = self._target()
        if endpoint is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send(CommandRequest(kind="reset", endpoint=endpoint))

        self.push_screen(
            ConfirmScreen(
                f"Reset {endpoint}",
                f"Close the breaker of {endpoint} and clear any forced or disabled state?",
                confirm_label="Reset",
            ),
            answered,
        )

    def action_filter(self) -> None:
        """Show the filter box and focus it."""
        box = self.query_one("#filter", FilterInput)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Narrow the table as the filter is typed."""
        if event.input.id == "filter":
            self._filter = event.value.strip()
            self._redraw_table(self._clock())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the filter keeps it and returns to the table."""
        if event.input.id == "filter":
            self.query_one("#endpoints", DataTable).focus()
            if not event.value.strip():
                event.input.display = False

    def action_help(self) -> None:
        """Show keys and column meanings."""
        self.push_screen(HelpScreen())

    def _ask(self, kind: str) -> None:
        endpoint = self._target()
        if endpoint is not None:
            self.push_screen(CommandScreen(kind, endpoint), self._check_last_serving)

    def _check_last_serving(self, request: CommandRequest | None) -> None:
        """Send ``request``, after two more confirmations when it would force open the last
        endpoint that can still serve a deployment (nothing would be left to fail over to)."""
        if request is None:
            return
        warning = last_serving_warning(self._model, request.endpoint)
        if request.kind != "force_open" or warning is None:
            self._send(request)
            return
        name = safe_text(request.endpoint)

        def second(yes: bool | None) -> None:
            if yes:
                self._send(request)

        def first(yes: bool | None) -> None:
            if yes:
                self.push_screen(
                    ConfirmScreen(
                        f"Force open {name}: are you sure?",
                        "Users get errors until it is reset"
                        + (" or the duration ends." if request.duration else ".")
                        + " Force it open anyway?",
                        confirm_label="Force open",
                    ),
                    second,
                )

        self.push_screen(ConfirmScreen(*warning, confirm_label="Continue"), first)

    def _target(self) -> str | None:
        endpoint = self.selected_endpoint()
        if endpoint is None:
            self.notify("no endpoint selected", severity="warning", markup=False)
        return endpoint

    # --- screen → Trio ------------------------------------------------------------------------

    def _send(self, request: CommandRequest | None) -> None:
        if request is None:
            return
        if self._model.fleet is not None:
            request = attrs.evolve(request, scope="fleet")  # fleet mode acts on every node
        if not self._model.can_command:
            # The connection dropped while the dialog was open.
            self._apply(CommandDone(request=request, ok=False, error="not connected"))
            return
        self._apply(CommandSent(request=request))
        if not self._guest.call_soon(self._link.submit, request, self._command_done):
            self._apply(CommandDone(request=request, ok=False, error="not connected"))

    def _command_done(self, done: CommandDone) -> None:
        # Called by Trio code, on this thread.
        self.post_message(LinkEvent(done))

    # --- fleet mode (see _fleet) ----------------------------------------------------------------

    @property
    def scope(self) -> str:
        """``"node"`` or ``"fleet"``: the scope asked of the server (``s`` toggles it)."""
        return self._scope

    def _redraw_fleet(self, table: DataTable[Text], fleet: FleetTable) -> bool:
        """Show the fleet table instead of the endpoint table while the server feeds the
        fleet; ``True`` when it did."""
        snapshot = self._model.fleet
        fleet_mode = snapshot is not None
        if fleet.display != fleet_mode:
            fleet.display = fleet_mode
            table.display = not fleet_mode
            (fleet if fleet_mode else table).focus()
        if snapshot is None:
            return False
        fleet.set_class(self._model.link.status is not LinkStatus.CONNECTED, "stale")
        fleet.show(snapshot, self._filter, self._wall_clock())
        self.query_one("#empty", Static).update(Text(fleet_empty_text(self._model, self._filter)))
        return True

    def action_toggle_scope(self) -> None:
        """Switch between this node and the whole fleet: reconnect asking for the other."""
        self._scope = "node" if self._scope == "fleet" else "fleet"
        self._model = Model()  # the other scope's figures come with the new welcome
        self._row_keys = []
        text = f"switching to {self._scope} scope: reconnecting"
        self.query_one("#log", RichLog).write(
            cells_text(log_cells(LogLine(wall=None, endpoint=None, text=text), self._wall_clock()))
        )
        self._redraw()
        self._guest.call_soon(self._link.reconnect)
