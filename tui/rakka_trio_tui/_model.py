"""The console's pure core: protocol frames and connection events in, a model and log lines out.

Nothing here touches Textual, Trio or a clock. :func:`reduce` folds one input into an
immutable :class:`Model` and says which log lines it produced; :mod:`._view` turns the model
into table rows and header cells. The caller passes ``now`` (a monotonic time) so countdowns
are computed, not read, and every function is deterministic under test.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

import attrs

from rakka_trio._control import _protocol as proto

from ._text import STATE_STYLES, format_duration, format_percent, safe_text

__all__ = [
    "SERVING_STATES",
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
    "SnapshotReceived",
    "reduce",
]

SERVING_STATES: Final = frozenset({"closed", "half_open", "disabled"})
"""Breaker states in which an endpoint still takes calls (open and forced-open fail fast)."""


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
    ``duration`` ``None`` means "until reset"; ``scope`` ``"fleet"`` acts on every node."""

    kind: str
    endpoint: str
    duration: float | None = None
    reason: str | None = None
    scope: str | None = None

    def describe(self) -> str:
        """A one-line description for the log, e.g. ``force_open a for 5m (reason: x)``."""
        text = f"{'fleet ' if self.scope == 'fleet' else ''}{self.kind} {self.endpoint}"
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
    """The answer to a command: ``ok`` with the endpoint's new ``state``, or the error. A
    fleet command's answer lists the nodes that acked and those that did not in time."""

    request: CommandRequest
    ok: bool
    state: str | None = None
    error: str | None = None
    nodes_acked: tuple[str, ...] = ()
    nodes_missing: tuple[str, ...] = ()


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
    log widget): the connection, the endpoints in the server's order and the deployments.
    ``last_event_wall`` is the server time of the latest transition or command logged (a
    reconnection's history skips what the log already has)."""

    link: LinkState = LinkState()
    endpoints: tuple[EndpointView, ...] = ()
    deployments: tuple[proto.DeploymentState, ...] = ()
    last_event_wall: float | None = None
    fleet: proto.FleetSnapshot | None = None  # fleet scope: every node (see _fleet)

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

    def _serving(self, name: str) -> bool:
        view = self.endpoint(name)
        return view is not None and view.state.state in SERVING_STATES

    def deployments_left_without(self, name: str) -> tuple[str, ...]:
        """The deployments for which ``name`` is the last endpoint that still takes calls:
        forcing it open would leave them nothing to serve (or fail over to)."""
        if not self._serving(name):
            return ()
        return tuple(
            dep.name
            for dep in self.deployments
            if name in dep.endpoints
            and not any(self._serving(other) for other in dep.endpoints if other != name)
        )

    def is_last_serving(self, name: str) -> bool:
        """True when ``name`` still takes calls and no other known endpoint does: forcing it
        open would leave nothing to serve (or fail over to).

        This looks at every endpoint of the server; with deployments in the snapshot,
        :meth:`deployments_left_without` says which deployments would be left with nothing.
        """
        target = self.endpoint(name)
        if target is None or target.state.state not in SERVING_STATES:
            return False
        return not any(
            view.state.state in SERVING_STATES for view in self.endpoints if view.state.name != name
        )


@attrs.frozen(kw_only=True)
class LogLine:
    """One event-log entry. ``wall`` is the server's Unix time of the event (``None`` for
    local events, shown with the time they were written); ``style`` colours the text."""

    wall: float | None
    endpoint: str | None
    text: str
    style: str = ""


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


def _with_endpoints(
    model: Model,
    endpoints: Sequence[proto.EndpointState],
    now: float,
    deployments: Sequence[proto.DeploymentState] | None = None,
) -> Model:
    return attrs.evolve(
        model, endpoints=_views(endpoints, now), deployments=tuple(deployments or ())
    )


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
        parts.append(f"failure rate {format_percent(frame.failure_rate)}")
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
        endpoint=safe_text(_where(frame.node, frame.endpoint)),
        text=safe_text("  ".join(parts)),
        style=STATE_STYLES.get(frame.to_state, ""),
    )


def _where(node: str | None, endpoint: str) -> str:
    return f"{node}: {endpoint}" if node else endpoint


def _command_line(frame: proto.CommandFrame) -> LogLine:
    text = f"{'fleet ' if frame.scope == 'fleet' else ''}{frame.command} by {frame.actor}"
    if frame.command != "reset":
        text += f" for {format_duration(frame.duration)}" if frame.duration else " until reset"
    if frame.reason:
        text += f"  reason: {frame.reason}"
    return LogLine(
        wall=frame.wall,
        endpoint=safe_text(_where(frame.node, frame.endpoint)),
        text=safe_text(text),
        style="cyan",
    )


def _seen(model: Model, wall: float) -> Model:
    if model.last_event_wall is not None and model.last_event_wall >= wall:
        return model
    return attrs.evolve(model, last_event_wall=wall)


def _history(
    model: Model, frames: Iterable[proto.TransitionFrame | proto.CommandFrame]
) -> tuple[Model, tuple[LogLine, ...]]:
    """Log lines for a welcome's history (what happened before we connected), skipping what
    the log already has from an earlier connection."""
    lines: list[LogLine] = []
    for frame in frames:
        if model.last_event_wall is not None and frame.wall <= model.last_event_wall:
            continue
        if isinstance(frame, proto.TransitionFrame):
            lines.append(_transition_line(frame))
        elif isinstance(frame, proto.CommandFrame):
            lines.append(_command_line(frame))
        else:
            continue
        model = _seen(model, frame.wall)
    return model, tuple(lines)


def _frame(
    model: Model, frame: proto.ServerFrame | proto.UnknownFrame, now: float
) -> tuple[Model, tuple[LogLine, ...]]:
    model = attrs.evolve(model, link=attrs.evolve(model.link, last_frame_at=now))
    if isinstance(frame, proto.StatsFrame):
        if frame.fleet is not None:
            model = attrs.evolve(model, fleet=frame.fleet)
        return _with_endpoints(model, frame.endpoints, now, frame.deployments), ()
    if isinstance(frame, proto.TransitionFrame):
        model = _apply_transition(_seen(model, frame.wall), frame, now)
        return model, (_transition_line(frame),)
    if isinstance(frame, proto.CommandFrame):
        return _seen(model, frame.wall), (_command_line(frame),)
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
        snapshot = frame.snapshot
        return _with_endpoints(model, snapshot.endpoints, now, snapshot.deployments), ()
    if isinstance(frame, proto.AckFrame):
        if frame.fleet is not None:
            return attrs.evolve(model, fleet=frame.fleet), ()
        if frame.snapshot is not None:
            snapshot = frame.snapshot
            return _with_endpoints(model, snapshot.endpoints, now, snapshot.deployments), ()
        return model, ()
    # An unknown frame type: a newer server. Nothing to show; the table keeps working.
    return model, ()


def _fleet_done_line(event: CommandDone) -> LogLine:
    acked, missing = event.nodes_acked, event.nodes_missing
    text = (
        f"fleet {event.request.kind} {event.request.endpoint}: acked by "
        f"{len(acked)}/{len(acked) + len(missing)} nodes"
    )
    if missing:
        text += f"; missing: {', '.join(missing)} (they apply it when back)"
    return LogLine(
        wall=None, endpoint=None, text=safe_text(text), style="bold red" if missing else "cyan"
    )


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
        model, earlier = _history(
            attrs.evolve(model, link=new_link, fleet=welcome.fleet), welcome.history or ()
        )
        snapshot = welcome.snapshot
        return _with_endpoints(model, snapshot.endpoints, now, snapshot.deployments), (
            *earlier,
            line,
        )
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
        snapshot = event.snapshot
        return _with_endpoints(model, snapshot.endpoints, now, snapshot.deployments), ()
    if isinstance(event, CommandSent):
        line = LogLine(
            wall=None, endpoint=None, text=f"sent {event.request.describe()}", style="cyan"
        )
        return model, (line,)
    if isinstance(event, CommandDone):
        request = event.request
        if event.ok and request.scope == "fleet":
            line = _fleet_done_line(event)
        elif event.ok:
            text = f"{request.kind} {request.endpoint}: done, now {event.state or '?'}"
            line = LogLine(wall=None, endpoint=None, text=safe_text(text), style="cyan")
        else:
            text = f"{request.kind} {request.endpoint} failed: {event.error or 'unknown error'}"
            line = LogLine(wall=None, endpoint=None, text=safe_text(text), style="bold red")
        return model, (line,)
    return _frame(model, event, now)
