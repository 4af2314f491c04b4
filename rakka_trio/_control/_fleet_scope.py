"""The control server's fleet scope: every node's figures and events, and fleet-wide commands.

A server has a fleet when its supervisor was configured with one (``SupervisorConfig(fleet=…)``)
or when it is a fleet server (:func:`~._fleet_server.serve_fleet_control`, no supervisor). Then:

* a connection whose ``hello`` asked for ``"scope": "fleet"`` (every connection, on a fleet
  server) is welcomed with a :class:`~._fleet_schema.FleetSnapshot`, and fed by one task per
  server, :meth:`FleetScope.run`: about once per ``interval`` it reads the fleet view (one
  pipeline and one ``MGET``), encodes one ``stats`` frame for every fleet connection, and
  tails the fleet's audit stream (transitions and commands of every node) onto an event bus
  that each fleet connection subscribes to, exactly as node-scope connections subscribe to
  the supervisor. It reads Redis only while some fleet connection is being served.
* a command carrying ``"scope": "fleet"`` (from a connection of either scope) goes through
  :class:`~rakka_trio.Fleet`: stored in Redis, broadcast, acknowledged by every live node;
  the ``ack`` lists ``nodes_acked`` and ``nodes_missing``.

Nothing here touches a request's path: the fleet is read and commanded from the control
server's own tasks, and a Redis outage shows as ``fresh: false`` and ``link_status``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._events import BreakerState, Event, EventBus, Subscription
from .._fleet import FleetError, FleetUnavailable, InvalidFleetCommand
from .._redact import redact
from .._version import __version__
from . import _protocol as proto
from ._connection import _STATS_BATCH, _Connection, _Counters, error_frame
from ._guards import LogLimiter

if TYPE_CHECKING:
    from .._fleet import (
        Fleet,
        FleetCommandResult,
        FleetEndpoint,
        FleetEvent,
        FleetNodeEndpoint,
        FleetOverride,
        FleetView,
    )
    from .._supervisor import Supervisor

__all__ = [
    "FleetFrameEvent",
    "FleetScope",
    "fleet_event_frame",
    "fleet_of",
    "fleet_snapshot",
]

log = logging.getLogger("rakka_trio.control")

EVENTS_PER_READ: Final = 200  # audit-stream entries read at once
READS_PER_TICK: Final = 5  # a burst beyond 5 x 200 entries is caught up over the next ticks
_MAX_TEXT: Final = 1000  # text read back from the stream is untrusted: bounded
_STATES: Final = frozenset(state.value for state in BreakerState)
_MAX_ACTOR: Final = 128  # the fleet's limit on an actor's length


def fleet_of(sup: Supervisor) -> Fleet | None:
    """The supervisor's fleet, ``None`` when it has none."""
    try:
        return sup.fleet
    except FleetError:
        return None


@attrs.frozen(kw_only=True)
class FleetFrameEvent(Event):
    """A frame for every fleet-scope connection, encoded once (an event of the fleet bus)."""

    text: str


# --- fleet view -> wire ---------------------------------------------------------------------


def _num(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _override_state(override: FleetOverride | None) -> proto.FleetOverrideState | None:
    if override is None:
        return None
    return proto.FleetOverrideState(
        id=override.id,
        command=override.command,
        issued_at=round(override.issued_at, 3),
        until=_num(override.until, 3),
        duration=_num(override.duration, 3),
        reason=override.reason,
        actor=override.actor,
        origin=override.origin,
    )


def _node_endpoint(fig: FleetNodeEndpoint, stale: bool) -> proto.FleetNodeEndpointState:
    until = fig.open_until
    until_reset = until is not None and math.isinf(until)
    return proto.FleetNodeEndpointState(
        node=fig.node,
        state=fig.state.value,
        stale=stale,
        failure_rate=_num(fig.failure_rate),
        consecutive_failures=fig.consecutive_failures,
        trips=fig.trips,
        open_until_wall=None if until_reset else _num(until, 3),
        until_reset=until_reset,
        forced_by=fig.forced_by,
        forced_reason=fig.forced_reason,
        requests=fig.requests,
        errors=fig.errors,
        rejected=fig.rejected,
        requests_per_second=round(fig.requests_per_second, 3),
        errors_per_second=round(fig.errors_per_second, 3),
        in_flight=fig.in_flight,
        queue_depth=fig.queue_depth,
        limiter_utilization=_num(fig.limiter_utilization),
        latency_p50=_num(fig.latency_p50),
        latency_p95=_num(fig.latency_p95),
        latency_p99=_num(fig.latency_p99),
        cost=round(fig.cost, 6),
    )


def _endpoint(ep: FleetEndpoint, stale: Mapping[str, bool]) -> proto.FleetEndpointState:
    return proto.FleetEndpointState(
        name=ep.name,
        summary=ep.summary,
        nodes=ep.nodes,
        open_on=ep.open_on,
        states=dict(ep.states),
        requests=ep.requests,
        errors=ep.errors,
        rejected=ep.rejected,
        requests_per_second=round(ep.requests_per_second, 3),
        errors_per_second=round(ep.errors_per_second, 3),
        error_rate=_num(ep.error_rate),
        in_flight=ep.in_flight,
        queue_depth=ep.queue_depth,
        latency_p50=_num(ep.latency_p50),
        latency_p95=_num(ep.latency_p95),
        latency_p99_max=_num(ep.latency_p99_max),
        cost=round(ep.cost, 6),
        override=_override_state(ep.override),
        per_node=[_node_endpoint(fig, stale.get(node, False)) for node, fig in ep.per_node.items()],
    )


def fleet_snapshot(view: FleetView) -> proto.FleetSnapshot:
    """The wire form of a :class:`~rakka_trio.FleetView`."""
    stale = {node_id: node.stale for node_id, node in view.nodes.items()}
    return proto.FleetSnapshot(
        fleet=view.fleet,
        wall=round(view.at, 3),
        link_up=view.link_up,
        link_down_since=_num(view.link_down_since, 3),
        link_status=view.link_status,
        fresh=view.fresh,
        nodes=[
            proto.FleetNodeState(
                node_id=node.node_id,
                host=node.host,
                pid=node.pid,
                started=round(node.started, 3),
                control_url=node.control_url,
                version=node.version,
                last_seen=round(node.last_seen, 3),
                stale=node.stale,
                endpoints=len(node.endpoints),
            )
            for node in view.nodes.values()
        ],
        endpoints=[_endpoint(ep, stale) for ep in view.endpoints.values()],
        unreadable=view.unreadable,
    )


# --- audit stream -> frames -------------------------------------------------------------------


def _text(fields: Mapping[str, str], name: str) -> str | None:
    value = fields.get(name)
    return None if value is None else value[:_MAX_TEXT]


def _count(fields: Mapping[str, str], name: str) -> int:
    try:
        value = int(fields.get(name, "0"))
    except ValueError:
        return 0
    return value if 0 <= value < 2**53 else 0


def _float(fields: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(fields[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fleet_event_frame(event: FleetEvent) -> proto.TransitionFrame | proto.CommandFrame | None:
    """The frame for one entry of the fleet's audit stream (``None``: not one to show).

    Entries are untrusted (anyone with the Redis password can write them): unknown states are
    dropped, numbers that do not parse read as absent, text is bounded.
    """
    fields = event.fields
    wall = round(event.at, 3)
    endpoint = event.endpoint[:_MAX_TEXT]
    node = event.node[:_MAX_TEXT] or None
    if event.kind == "transition":
        from_state, to_state = fields.get("from"), fields.get("to")
        if from_state not in _STATES or to_state not in _STATES:
            return None
        until_text = fields.get("open_until")
        until_reset = until_text == "inf"
        until = None if until_reset else _float(fields, "open_until")
        return proto.TransitionFrame(
            wall=wall,
            endpoint=endpoint,
            from_state=from_state,
            to_state=to_state,
            cause=(fields.get("cause") or "")[:64],
            consecutive_failures=_count(fields, "consecutive_failures"),
            failure_rate=_num(_float(fields, "failure_rate")),
            calls_in_window=_count(fields, "calls_in_window"),
            trips=_count(fields, "trips"),
            open_until_in=None if until is None else round(max(0.0, until - event.at), 3),
            open_until_wall=_num(until, 3),
            until_reset=until_reset,
            actor=_text(fields, "actor"),
            reason=_text(fields, "reason"),
            node=node,
        )
    if event.kind == "command":
        duration = _float(fields, "duration")
        return proto.CommandFrame(
            wall=wall,
            endpoint=endpoint,
            command=(fields.get("command") or "")[:64],
            actor=_text(fields, "actor") or "?",
            reason=_text(fields, "reason"),
            duration=None if duration is None or duration <= 0 else round(duration, 3),
            node=node,
            scope=proto.FLEET if fields.get("scope") == proto.FLEET else proto.NODE,
        )
    return None


def _ack(
    msg: proto.ForceOpen | proto.Reset | proto.Disable, result: FleetCommandResult
) -> proto.AckFrame:
    return proto.AckFrame(
        id=msg.id,
        command=msg.TYPE,
        endpoint=msg.endpoint,
        scope=proto.FLEET,
        command_id=result.command_id,
        nodes_acked=list(result.nodes_acked),
        nodes_missing=list(result.nodes_missing),
        absent_on=list(result.absent_on),
        acks={node: round(at, 3) for node, at in result.acks.items()},
    )


# --- the scope --------------------------------------------------------------------------------


class FleetScope:
    """The fleet part of one control server (internal): the fleet connections, their feed
    and the fleet-scope answers."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        counters: _Counters,
        log_limiter: LogLimiter,
        event_buffer: int,
        interval: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.interval = fleet.config.publish_interval if interval is None else interval
        self._counters = counters
        self._log = log_limiter
        self._bus = EventBus(event_buffer)
        self.connections: set[_Connection] = set()
        self._present = trio.Event()  # set while any fleet connection is being served
        self._latest: tuple[float, proto.FleetSnapshot] | None = None  # (Trio time, snapshot)
        self._cursor: str | None = None  # the last audit-stream entry fed to the connections

    # --- connections ----------------------------------------------------------------------

    def subscribe(
        self, conn: _Connection, buffer: int
    ) -> AbstractAsyncContextManager[Subscription]:
        """Serve ``conn`` the fleet's events from now on (close the subscription when done,
        then call :meth:`detach`)."""
        self.connections.add(conn)
        self._present.set()
        return self._bus.open_subscription(buffer=buffer, stats=False)

    def detach(self, conn: _Connection) -> None:
        """``conn`` is no longer served (a no-op for a node-scope connection)."""
        if conn not in self.connections:
            return  # never fleet-scope: the feed may be waiting on the current event
        self.connections.discard(conn)
        if not self.connections:
            self._present = trio.Event()

    async def snapshot(self) -> proto.FleetSnapshot:
        """The latest fleet snapshot: the one the feed read this interval, or a fresh read."""
        latest = self._latest
        if latest is not None and trio.current_time() - latest[0] < self.interval:
            return latest[1]
        return await self._read()

    async def _read(self) -> proto.FleetSnapshot:
        snapshot = fleet_snapshot(await self.fleet.view())
        self._latest = (trio.current_time(), snapshot)
        return snapshot

    async def welcome(self, role: str) -> proto.WelcomeFrame:
        """The welcome of a fleet connection: the fleet snapshot, and a node snapshot with no
        endpoints (every node's endpoints are in ``fleet``)."""
        fleet = await self.snapshot()
        return proto.WelcomeFrame(
            protocol=proto.PROTOCOL_VERSION,
            role=role,
            server=f"rakka-trio/{__version__}",
            stats_interval=self.interval,
            snapshot=proto.Snapshot(node_id=self.fleet.node_id, wall=fleet.wall, endpoints=[]),
            scope=proto.FLEET,
            fleet=fleet,
        )

    # --- the feed -------------------------------------------------------------------------

    async def run(self) -> None:
        """Feed every fleet connection: a stats frame per interval and the audit stream's new
        entries. Reads Redis only while some fleet connection is being served."""
        while True:
            await self._present.wait()
            self._cursor = None
            while self.connections:
                started = trio.current_time()
                try:
                    await self._tick()
                except Exception as exc:
                    # One task feeds every fleet connection: a bad tick costs that tick only.
                    self._log.log(
                        log, logging.ERROR, "fleet-feed", "control: fleet feed failed",
                        exc_info=exc,
                    )  # fmt: skip
                await trio.sleep_until(started + self.interval)

    async def _tick(self) -> None:
        snapshot = await self._read()
        frame = proto.StatsFrame(
            node_id=self.fleet.node_id,
            wall=snapshot.wall,
            endpoints=[],
            scope=proto.FLEET,
            fleet=snapshot,
        )
        text = proto.encode(frame)
        self._counters.stats_broadcasts += 1
        at = trio.current_time()
        for i, conn in enumerate(list(self.connections)):
            if i and i % _STATS_BATCH == 0:
                await trio.lowlevel.checkpoint()  # let the writers run between batches
            conn.offer_stats(at, text)
        if snapshot.link_up:
            await self._follow_stream()

    async def _follow_stream(self) -> None:
        """Publish the audit stream's entries since the last tick (the first tick of a feed
        only notes where the stream ends: a console gets what happens from then on)."""
        try:
            if self._cursor is None:
                last = await self.fleet.recent_events(1)
                self._cursor = last[-1].id if last else "0-0"
                return
            for _ in range(READS_PER_TICK):
                events = await self.fleet.recent_events(EVENTS_PER_READ, after=self._cursor)
                for event in events:
                    self._cursor = event.id
                    frame = fleet_event_frame(event)
                    if frame is not None:
                        self._bus.publish(
                            FleetFrameEvent(at=trio.current_time(), text=proto.encode(frame))
                        )
                if len(events) < EVENTS_PER_READ:
                    return
        except FleetUnavailable:
            return  # the link went down between the view and this read: next tick

    # --- answers --------------------------------------------------------------------------

    async def answer(
        self,
        conn: _Connection,
        msg: proto.ForceOpen | proto.Reset | proto.Disable | proto.GetState,
    ) -> proto.ServerFrame:
        """The answer to a fleet-scope ``get_state`` or command (the caller checked the
        role): an ``ack`` once every live node acked or the ack timeout passed, or an
        ``error``."""
        if isinstance(msg, proto.GetState):
            return proto.AckFrame(
                id=msg.id, command=msg.TYPE, scope=proto.FLEET, fleet=await self._read()
            )
        fleet = self.fleet
        reason = redact(msg.reason) if msg.reason is not None else None
        actor = conn.actor[:_MAX_ACTOR]
        try:
            if isinstance(msg, proto.ForceOpen):
                result = await fleet.force_open(msg.endpoint, msg.duration, reason, actor=actor)
            elif isinstance(msg, proto.Disable):
                result = await fleet.disable(msg.endpoint, msg.duration, reason, actor=actor)
            else:
                result = await fleet.reset(msg.endpoint, reason, actor=actor)
        except InvalidFleetCommand as exc:
            return error_frame(msg.id, proto.ErrorCode.INVALID, str(exc))
        except FleetUnavailable as exc:
            return error_frame(msg.id, proto.ErrorCode.FLEET_UNAVAILABLE, str(exc))
        except Exception:
            log.exception("control: fleet %s from %s failed", msg.TYPE, conn.actor)
            return error_frame(
                msg.id, proto.ErrorCode.INTERNAL, "the fleet command failed; see the server log"
            )
        self._counters.commands += 1
        log.info(
            "control: fleet %s %s by %s: %d nodes acked, %d missing",
            msg.TYPE,
            msg.endpoint,
            conn.actor,
            len(result.nodes_acked),
            len(result.nodes_missing),
        )
        return _ack(msg, result)
