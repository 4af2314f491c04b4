"""The TUI's pure core: protocol frames and connection events in, table rows and log lines out.

Nothing here touches Textual, Trio or a clock. :func:`reduce` folds one input into an
immutable :class:`Model` and says which log lines it produced; :func:`table_rows`,
:func:`status_cells` and :func:`log_cells` turn the model into plain text cells with style
names. The caller passes ``now`` (a monotonic time) so countdowns are computed, not read, and
every function is deterministic under test.

Every string that came from the network goes through :func:`safe_text` before it is shown,
so a hostile or broken server cannot put escape sequences on the operator's terminal.
"""

from __future__ import annotations

import enum
import math
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

import attrs

from rakka_trio._control import _protocol as proto

__all__ = [
    "COLUMNS",
    "Cell",
    "CommandDone",
    "CommandRequest",
    "CommandSent",
    "Connected",
    "Connecting",
    "Disconnected",
    "EndpointView",
    "Input",
    "LinkState",
    "LinkStatus",
    "LogLine",
    "Model",
    "Row",
    "SnapshotReceived",
    "display_url",
    "format_clock",
    "format_duration",
    "log_cells",
    "matches_filter",
    "parse_duration",
    "reduce",
    "safe_text",
    "status_cells",
    "table_rows",
]

MISSING: Final = "\N{EN DASH}"
"""Shown (a dash) for a figure the server did not report (``null`` on the wire)."""

COLUMNS: Final = (
    "ENDPOINT",
    "PROVIDER",
    "STATE",
    "FAILS",
    "FAIL RATE",
    "OPEN UNTIL",
    "RPM/TPM",
    "IN-FLIGHT",
    "P95",
    "TRIPS",
    "REJECTED",
    "NOTE",
)
"""Column titles of the endpoint table, in order (:attr:`Row.cells` follows it)."""

STATE_STYLES: Final = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "forced_open": "bold magenta",
    "disabled": "dim",
}
"""Rich style per breaker state (the same palette as ``rakka-trio demo``)."""

_TIMED_STATES: Final = frozenset({"open", "half_open", "forced_open", "disabled"})
_STALE_AFTER_INTERVALS: Final = 3.0  # missed stats frames before the header says "stale"
_STALE_MINIMUM: Final = 5.0  # seconds; a fast stats interval should not make the header flap


# --- inputs -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Connecting:
    """The link is opening a connection; ``attempt`` is 0 for the first connection and
    counts the retries since the last good one after that."""

    attempt: int


@attrs.frozen(kw_only=True)
class Connected:
    """The server greeted us: role and first snapshot are in ``welcome``."""

    welcome: proto.WelcomeFrame


@attrs.frozen(kw_only=True)
class Disconnected:
    """The connection failed or ended. ``retry_in`` is the backoff before retry number
    ``attempt`` (seconds), or ``None`` when the link gave up (a refused token: retrying
    cannot help)."""

    reason: str
    retry_in: float | None
    attempt: int


@attrs.frozen(kw_only=True)
class SnapshotReceived:
    """A fresh ``get_state`` answer (asked for after a ``lagged`` frame or a new endpoint)."""

    snapshot: proto.Snapshot


@attrs.frozen(kw_only=True)
class CommandRequest:
    """What the operator asked for: ``kind`` is ``force_open``, ``reset`` or ``disable``;
    ``duration`` ``None`` means "until reset"."""

    kind: str
    endpoint: str
    duration: float | None = None
    reason: str | None = None

    def describe(self) -> str:
        """A one-line description for the log, e.g. ``force_open a for 5m (reason: x)``."""
        text = f"{self.kind} {self.endpoint}"
        if self.kind != "reset":
            text += f" for {format_duration(self.duration)}" if self.duration else " until reset"
        if self.reason:
            text += f" (reason: {self.reason})"
        return safe_text(text)


@attrs.frozen(kw_only=True)
class CommandSent:
    """The operator confirmed a command; it is on its way."""

    request: CommandRequest


@attrs.frozen(kw_only=True)
class CommandDone:
    """The answer to a command: ``ok`` with the endpoint's new ``state``, or the error."""

    request: CommandRequest
    ok: bool
    state: str | None = None
    error: str | None = None


Input: TypeAlias = (
    proto.ServerFrame
    | proto.UnknownFrame
    | Connecting
    | Connected
    | Disconnected
    | SnapshotReceived
    | CommandSent
    | CommandDone
)
"""Everything :func:`reduce` accepts."""


# --- the model --------------------------------------------------------------------------------


class LinkStatus(enum.Enum):
    """The connection as the header shows it."""

    CONNECTING = "connecting"
    """First connection attempt, nothing known yet."""
    CONNECTED = "connected"
    """Greeted; frames are flowing."""
    RECONNECTING = "reconnecting"
    """The connection was lost or refused; retrying with backoff (the table is stale)."""
    FAILED = "failed"
    """Gave up: the server refused the token. Retrying cannot help."""


@attrs.frozen(kw_only=True)
class LinkState:
    """What we know about the connection. Times are the caller's monotonic clock."""

    status: LinkStatus = LinkStatus.CONNECTING
    role: str | None = None
    node_id: str | None = None
    server: str | None = None
    stats_interval: float | None = None
    attempt: int = 0
    retry_at: float | None = None
    error: str | None = None
    last_frame_at: float | None = None


@attrs.frozen(kw_only=True)
class EndpointView:
    """One endpoint as last reported, with its timer turned into a local ``deadline``
    (monotonic seconds) so the countdown keeps running between frames."""

    state: proto.EndpointState
    deadline: float | None


@attrs.frozen(kw_only=True)
class Model:
    """Everything the screen shows except the log (which is append-only and lives in the
    log widget): the connection and the endpoints in the server's order."""

    link: LinkState = LinkState()
    endpoints: tuple[EndpointView, ...] = ()

    @property
    def can_command(self) -> bool:
        """True when operator commands can be sent right now."""
        return self.link.status is LinkStatus.CONNECTED and self.link.role == "operator"

    def endpoint(self, name: str) -> EndpointView | None:
        """The endpoint called ``name``, if known."""
        for view in self.endpoints:
            if view.state.name == name:
                return view
        return None


@attrs.frozen(kw_only=True)
class LogLine:
    """One event-log entry. ``wall`` is the server's Unix time of the event (``None`` for
    local events, shown with the time they were written); ``style`` colours the text."""

    wall: float | None
    endpoint: str | None
    text: str
    style: str = ""


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


# --- text helpers -----------------------------------------------------------------------------


def safe_text(text: str) -> str:
    """``text`` with every non-printable character (escape sequences, bidi overrides, line
    breaks) replaced by a visible ``\\xNN`` escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def display_url(url: str) -> str:
    """``url`` as it is safe to show: scheme, host, port and path only. User info, query and
    fragment are dropped because that is where people paste tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path if parts.path not in ("", "/") else ""
    return safe_text(urllib.parse.urlunsplit((parts.scheme, netloc, path, "", "")))


def format_duration(seconds: float | None) -> str:
    """A compact duration: ``42s``, ``4m05s``, ``2h03m``, ``3d04h`` (a dash for ``None``)."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    total = max(0, math.ceil(seconds - 1e-9))  # a countdown shows 1s until it reaches 0
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """Parse what an operator types for a duration: ``300``, ``90s``, ``5m``, ``1.5h``,
    ``2d``; blank means "until reset" (``None``). Raises :class:`ValueError` with a
    readable message for anything else or a value outside the protocol's range."""
    cleaned = text.strip().lower()
    if not cleaned:
        return None
    unit = cleaned[-1] if cleaned[-1] in "smhd" else ""
    number = cleaned[: len(cleaned) - len(unit)].strip()
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError("duration: a number of seconds, or with a unit: 90s, 5m, 2h, 1d") from None
    if not math.isfinite(value) or not 0 < value <= proto.MAX_DURATION:
        raise ValueError("duration: must be more than 0 and at most 366 days")
    return value


def format_clock(wall: float) -> str:
    """Local time of day with milliseconds, for the event log."""
    stamp = time.strftime("%H:%M:%S", time.localtime(wall))
    return f"{stamp}.{int(wall * 1000) % 1000:03d}"


def _percent(value: float | None) -> str:
    if value is None:
        return MISSING
    if 0 < value < 0.01:
        return "<1%"
    return f"{value:.0%}"


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s"


def _deadline(open_until_in: float | None, now: float) -> float | None:
    return None if open_until_in is None else now + open_until_in


# --- the reducer ------------------------------------------------------------------------------


def _views(
    snapshot_endpoints: Iterable[proto.EndpointState], now: float
) -> tuple[EndpointView, ...]:
    return tuple(
        EndpointView(state=ep, deadline=_deadline(ep.open_until_in, now))
        for ep in snapshot_endpoints
    )


def _with_endpoints(model: Model, endpoints: Sequence[proto.EndpointState], now: float) -> Model:
    return attrs.evolve(model, endpoints=_views(endpoints, now))


def _replace_endpoint(model: Model, name: str, view: EndpointView) -> Model:
    return attrs.evolve(
        model,
        endpoints=tuple(view if v.state.name == name else v for v in model.endpoints),
    )


def _apply_transition(model: Model, frame: proto.TransitionFrame, now: float) -> Model:
    """Update the endpoint at once, so the table does not wait for the next stats frame."""
    current = model.endpoint(frame.endpoint)
    if current is None:
        return model  # an endpoint we have not seen yet: the next stats frame brings it
    forced = frame.to_state in ("forced_open", "disabled")
    state = attrs.evolve(
        current.state,
        state=frame.to_state,
        consecutive_failures=frame.consecutive_failures,
        # A transition does not carry the total; it is at least the consecutive count, and
        # the next stats frame brings the exact figure.
        failures=max(current.state.failures, frame.consecutive_failures),
        failure_rate=frame.failure_rate,
        calls_in_window=frame.calls_in_window,
        trips=frame.trips,
        open_until_in=frame.open_until_in,
        open_until_wall=frame.open_until_wall,
        until_reset=frame.until_reset,
        forced_reason=frame.reason if forced else None,
        forced_by=frame.actor if forced else None,
    )
    return _replace_endpoint(
        model,
        frame.endpoint,
        EndpointView(state=state, deadline=_deadline(frame.open_until_in, now)),
    )


def _transition_line(frame: proto.TransitionFrame) -> LogLine:
    parts = [f"{frame.from_state} → {frame.to_state}", f"({frame.cause})"]
    if frame.consecutive_failures:
        parts.append(f"{frame.consecutive_failures} consecutive failures")
    if frame.failure_rate is not None:
        parts.append(f"failure rate {_percent(frame.failure_rate)}")
    if frame.until_reset:
        parts.append("until reset")
    elif frame.open_until_in is not None:
        parts.append(f"for {format_duration(frame.open_until_in)}")
    if frame.actor:
        parts.append(f"by {frame.actor}")
    if frame.reason:
        parts.append(f"reason: {frame.reason}")
    return LogLine(
        wall=frame.wall,
        endpoint=safe_text(frame.endpoint),
        text=safe_text("  ".join(parts)),
        style=STATE_STYLES.get(frame.to_state, ""),
    )


def _command_line(frame: proto.CommandFrame) -> LogLine:
    text = f"{frame.command} by {frame.actor}"
    if frame.command != "reset":
        text += f" for {format_duration(frame.duration)}" if frame.duration else " until reset"
    if frame.reason:
        text += f"  reason: {frame.reason}"
    return LogLine(
        wall=frame.wall, endpoint=safe_text(frame.endpoint), text=safe_text(text), style="cyan"
    )


def _frame(
    model: Model, frame: proto.ServerFrame | proto.UnknownFrame, now: float
) -> tuple[Model, tuple[LogLine, ...]]:
    model = attrs.evolve(model, link=attrs.evolve(model.link, last_frame_at=now))
    if isinstance(frame, proto.StatsFrame):
        return _with_endpoints(model, frame.endpoints, now), ()
    if isinstance(frame, proto.TransitionFrame):
        return _apply_transition(model, frame, now), (_transition_line(frame),)
    if isinstance(frame, proto.CommandFrame):
        return model, (_command_line(frame),)
    if isinstance(frame, proto.LaggedFrame):
        line = LogLine(
            wall=frame.wall,
            endpoint=None,
            text=f"fell behind: {frame.dropped} events dropped (state refreshed)",
            style="yellow",
        )
        return model, (line,)
    if isinstance(frame, proto.EndpointAddedFrame):
        line = LogLine(wall=frame.wall, endpoint=safe_text(frame.endpoint), text="endpoint added")
        return model, (line,)
    if isinstance(frame, proto.EndpointRemovedFrame):
        remaining = tuple(v for v in model.endpoints if v.state.name != frame.endpoint)
        line = LogLine(wall=frame.wall, endpoint=safe_text(frame.endpoint), text="endpoint removed")
        return attrs.evolve(model, endpoints=remaining), (line,)
    if isinstance(frame, proto.TaskRestartedFrame):
        text = (
            f"task {frame.task} crashed ({frame.error}); restart #{frame.crashes} "
            f"in {frame.backoff:g}s"
        )
        return model, (LogLine(wall=frame.wall, endpoint=None, text=safe_text(text), style="red"),)
    if isinstance(frame, proto.ErrorFrame):
        # An error without a pending command (e.g. rate_limited for a frame we gave up on).
        text = f"server error {frame.code}: {frame.message}"
        return model, (LogLine(wall=None, endpoint=None, text=safe_text(text), style="red"),)
    if isinstance(frame, proto.WelcomeFrame):
        return _with_endpoints(model, frame.snapshot.endpoints, now), ()
    if isinstance(frame, proto.AckFrame):
        if frame.snapshot is not None:
            return _with_endpoints(model, frame.snapshot.endpoints, now), ()
        return model, ()
    # An unknown frame type: a newer server. Nothing to show; the table keeps working.
    return model, ()


def reduce(model: Model, event: Input, now: float) -> tuple[Model, tuple[LogLine, ...]]:
    """Fold one input into the model at monotonic time ``now``.

    Returns the new model and the log lines the input produced (oldest first).
    """
    link = model.link
    if isinstance(event, Connecting):
        # After a loss or a refusal the header keeps saying "reconnecting" through every
        # attempt, so the operator knows the table is stale until "connected" comes back.
        status = LinkStatus.CONNECTING if event.attempt == 0 else LinkStatus.RECONNECTING
        return attrs.evolve(
            model, link=attrs.evolve(link, status=status, attempt=event.attempt, retry_at=None)
        ), ()
    if isinstance(event, Connected):
        welcome = event.welcome
        new_link = LinkState(
            status=LinkStatus.CONNECTED,
            role=safe_text(welcome.role),
            node_id=safe_text(welcome.snapshot.node_id),
            server=safe_text(welcome.server),
            stats_interval=welcome.stats_interval,
            last_frame_at=now,
        )
        text = f"connected as {new_link.role} to {new_link.server} (node {new_link.node_id})"
        line = LogLine(wall=None, endpoint=None, text=text, style="green")
        return _with_endpoints(
            attrs.evolve(model, link=new_link), welcome.snapshot.endpoints, now
        ), (line,)
    if isinstance(event, Disconnected):
        reason = safe_text(event.reason)
        if event.retry_in is None:
            new_link = attrs.evolve(
                link, status=LinkStatus.FAILED, error=reason, retry_at=None, attempt=event.attempt
            )
            text = f"not connected: {reason} (not retrying)"
        else:
            new_link = attrs.evolve(
                link,
                status=LinkStatus.RECONNECTING,
                error=reason,
                retry_at=now + event.retry_in,
                attempt=event.attempt,
            )
            text = f"{reason}; retrying in {format_duration(event.retry_in)}"
        return attrs.evolve(model, link=new_link), (
            LogLine(wall=None, endpoint=None, text=text, style="bold red"),
        )
    if isinstance(event, SnapshotReceived):
        return _with_endpoints(model, event.snapshot.endpoints, now), ()
    if isinstance(event, CommandSent):
        line = LogLine(
            wall=None, endpoint=None, text=f"sent {event.request.describe()}", style="cyan"
        )
        return model, (line,)
    if isinstance(event, CommandDone):
        request = event.request
        if event.ok:
            text = f"{request.kind} {request.endpoint}: done, now {event.state or '?'}"
            line = LogLine(wall=None, endpoint=None, text=safe_text(text), style="cyan")
        else:
            text = f"{request.kind} {request.endpoint} failed: {event.error or 'unknown error'}"
            line = LogLine(wall=None, endpoint=None, text=safe_text(text), style="bold red")
        return model, (line,)
    return _frame(model, event, now)


# --- views ------------------------------------------------------------------------------------


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
    return Cell(f"{_percent(ep.failure_rate)} of {ep.calls_in_window}", style)


def _limit_cell(ep: proto.EndpointState) -> Cell:
    value = ep.limiter_utilization
    if value is None:
        return Cell(MISSING)
    style = "red" if value >= 0.95 else "yellow" if value >= 0.8 else ""
    return Cell(_percent(value), style)


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
            Cell(safe_text(ep.name), "bold"),
            Cell(safe_text(ep.provider)),
            Cell(safe_text(ep.state), STATE_STYLES.get(ep.state, "")),
            _fails_cell(ep),
            _rate_cell(ep),
            _until_cell(view, now),
            _limit_cell(ep),
            _in_flight_cell(ep),
            Cell(_latency(ep.latency_p95)),
            Cell(str(ep.trips)),
            # Calls the breaker failed fast: during a drill this is the traffic moving away.
            Cell(str(ep.rejected), "magenta" if ep.rejected else ""),
            _note_cell(ep),
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
        cells.append(Cell(f"✖ not connected: {link.error or 'refused'}", "bold red"))
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
        cells.append(Cell(f"  node {link.node_id}  {len(model.endpoints)} endpoints"))
        if link.role != "operator":
            hint = "  read-only: commands need an operator token (--token / RAKKA_TOKEN)"
            cells.append(Cell(hint, "yellow"))
        stale = _stale_for(link, now)
        if stale is not None:
            cells.append(Cell(f"  no update for {format_duration(stale)}", "bold yellow"))
    return tuple(cells)


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
