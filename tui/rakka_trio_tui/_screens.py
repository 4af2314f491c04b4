"""Modal dialogs: force-open / disable (duration and reason), confirm, help.

Each dialog is a :class:`~textual.screen.ModalScreen` that dismisses with its answer; the App
decides what to do with it. Key bindings of the App do not reach a modal (Textual stops the
binding chain at a modal screen), so typing ``f`` into a reason never opens another dialog.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from rakka_trio._control._input import DURATION_HELP

from ._link import build_command
from ._model import CommandRequest
from ._text import MISSING, parse_duration, safe_text

__all__ = ["CommandScreen", "ConfirmScreen", "HelpScreen"]

_DIALOG_CSS = """
{name} {
    align: center middle;
}
{name} > Vertical {
    width: 72;
    max-width: 100%;
    height: auto;
    max-height: 100%;
    padding: 1 2;
    border: thick $accent;
    background: $surface;
}
{name} .title {
    text-style: bold;
    margin-bottom: 1;
}
{name} .problem {
    color: $error;
    height: auto;
}
{name} Horizontal {
    height: auto;
    margin-top: 1;
    align-horizontal: right;
}
{name} Button {
    margin-left: 2;
}
"""

_VERBS = {
    "force_open": ("Force open", "Hold the breaker open: every call fails fast (or fails over)."),
    "disable": ("Disable", "Bypass the breaker: every call passes, failures are still counted."),
}


class CommandScreen(ModalScreen[CommandRequest | None]):
    """Ask for a duration and a reason, then confirm a ``force_open`` or ``disable``.

    Dismisses with the :class:`CommandRequest` or ``None`` (cancelled). Values the protocol
    would refuse are reported in the dialog instead of being sent.
    """

    DEFAULT_CSS = _DIALOG_CSS.replace("{name}", "CommandScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, kind: str, endpoint: str) -> None:
        super().__init__()
        if kind not in _VERBS:
            raise ValueError(f"CommandScreen is for force_open or disable, not {kind!r}")
        self.kind = kind
        self.endpoint = endpoint

    def compose(self) -> ComposeResult:
        """The dialog: title, what it does, duration and reason fields, buttons."""
        verb, explanation = _VERBS[self.kind]
        with Vertical():
            yield Label(Text(f"{verb} {safe_text(self.endpoint)}"), classes="title")
            yield Static(explanation)
            yield Label(f"Duration ({DURATION_HELP}; blank: until reset)")
            yield Input(placeholder="until reset", id="duration")
            yield Label("Reason (recorded in the audit trail)")
            yield Input(placeholder="e.g. incident-42", id="reason", max_length=1000)
            yield Static("", id="problem", classes="problem")
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button(verb, id="confirm", variant="error")

    def on_mount(self) -> None:
        """Start in the duration field."""
        self.query_one("#duration", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the duration moves to the reason; Enter in the reason confirms."""
        event.stop()
        if event.input.id == "duration":
            self.query_one("#reason", Input).focus()
        else:
            self._confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Confirm or cancel."""
        event.stop()
        if event.button.id == "confirm":
            self._confirm()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        """Close without sending anything."""
        self.dismiss(None)

    def _confirm(self) -> None:
        problem = self.query_one("#problem", Static)
        try:
            duration = parse_duration(self.query_one("#duration", Input).value)
            reason = self.query_one("#reason", Input).value.strip() or None
            request = CommandRequest(
                kind=self.kind, endpoint=self.endpoint, duration=duration, reason=reason
            )
            build_command(request, 0)  # the protocol's own validation, before anything is sent
        except ValueError as exc:
            problem.update(Text(safe_text(str(exc))))
            return
        self.dismiss(request)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with ``True`` only for an explicit yes."""

    DEFAULT_CSS = _DIALOG_CSS.replace("{name}", "ConfirmScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
    ]

    def __init__(self, title: str, question: str, *, confirm_label: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        """Title, question, buttons."""
        with Vertical():
            yield Label(Text(safe_text(self.title_text)), classes="title")
            yield Static(Text(safe_text(self.question)))
            with Horizontal():
                yield Button("No", id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="warning")

    def on_mount(self) -> None:
        """Focus "No": a stray Enter must not confirm."""
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_answer(self, yes: bool) -> None:
        """Answer from the keyboard (``y`` / ``n`` / Escape)."""
        self.dismiss(yes)


HELP_TEXT = f"""\
Keys
  ↑ ↓      select an endpoint
  f        force the selected breaker open (asks duration, reason)
  r        reset it: close the breaker, clear a forced or
           disabled state (asks to confirm)
  d        disable it: bypass the breaker (asks duration, reason)
  /        filter the table by name, provider or state (Esc clears)
  s        node / fleet: every node of the server's fleet (f, r, d
           then act on every node and log which nodes acked)
  Enter    in fleet mode: the selected endpoint on each node
  ?        this help
  q        quit (also Ctrl-C, Ctrl-Q)

Durations: {DURATION_HELP}; blank means until reset.
Forcing open the last endpoint that can still serve a deployment
asks twice.
f, r and d need an operator token (--token or RAKKA_TOKEN); a
read-only (viewer) connection shows them greyed out.

Columns (a narrow terminal hides PROVIDER first, then REQ/S,
TRIPS, LIMIT, FAIL RATE, NOTE, REJECTED, TREND, OPEN UNTIL, ERR%)
  FAILS       consecutive failures (total in parentheses)
  FAIL RATE   failure rate over the breaker's window, and the
              calls in that window
  ERR%        share of recent requests that failed (last 10 s)
  REQ/S       recent requests per second
  TREND       requests per 10 s, oldest first; red when most of
              the latest ones failed
  OPEN UNTIL  time left in an open, half-open, forced or
              disabled state
  LIMIT       the busiest rate limit (RPM, TPM, CONC); ↓ when
              the provider's headers lowered it; paused after
              a 429
  IN-FLIGHT   calls in progress (and queued)
  P95         95th-percentile latency
  TRIPS       times the breaker opened on its own
  REJECTED    calls the breaker failed fast (they fail over)
  NOTE        reason and operator of a forced state
  {MISSING}           the server did not report this figure

Under the table: the selected endpoint's attempts per second by
cause, retries, latency and limits; then each deployment: how
many endpoints can serve, success rate, and where requests fail
over (from → to, cause, per second and in all).

When the connection drops it is retried with backoff; the header
says "reconnecting" and the table keeps the last known state.
"""
"""The help screen's text; no line is wider than the dialog, even at 80 columns."""


class HelpScreen(ModalScreen[None]):
    """Key bindings and column meanings."""

    DEFAULT_CSS = (
        _DIALOG_CSS.replace("{name}", "HelpScreen").replace("width: 72;", "width: 76;")
        + """
HelpScreen > Vertical {
    height: 100%;
    max-height: 50;
}
HelpScreen VerticalScroll {
    height: 1fr;
}
"""
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        """The help text and a close button."""
        with Vertical():
            yield Label("rakka-trio tui", classes="title")
            with VerticalScroll():
                yield Static(Text(HELP_TEXT), id="help-text")
            with Horizontal():
                yield Button("Close", id="close", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Close."""
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        """Close from the keyboard."""
        self.dismiss(None)
