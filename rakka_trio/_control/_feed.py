"""Serving an admitted control connection: its event feed, the shared stats broadcast and
the operator commands.

Each connection runs two tasks in its own nursery:

* the **reader** parses client frames, applies the per-connection rate limit and queues one
  answer (an ``ack`` or an ``error``) per frame in a small bounded reply queue; when that
  queue is full it stops reading, which pushes back on the client's TCP connection;
* the **writer** sends the connection's supervisor events, the latest stats frame and the
  answers. Before each answer it sends every event already queued, so an ``ack`` always
  arrives *after* the transition its command caused. The event subscription is bounded and
  drops its oldest events when this client falls behind (the client then gets a ``lagged``
  frame), so a client that never reads can only ever slow itself down — publishing an event
  never waits for any connection.

Stats go through one broadcaster task: each tick is encoded once and handed to the
connections in batches spread over part of the interval, so hundreds of viewers do not all
wake at the same instant (which is when the application's own requests would wait). Each
connection holds only the newest stats frame, so a lagging client skips to the latest. Every
send has a deadline (``send_timeout``): a client that has stopped reading is disconnected.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager

import trio
from trio_websocket import ConnectionClosed

from .._errors import RakkaError, UnknownEndpoint
from .._events import EndpointAdded, EndpointRemoved, Event, Lagged, Stats, Subscription, Transition
from .._redact import redact
from .._supervisor import Supervisor
from .._version import __version__
from . import _protocol as proto
from ._admission import frame_problem
from ._connection import (
    _CLOSE_TIMEOUT,
    _ENCODE_CACHE,
    _REPLY_BUFFER,
    _STATS_BATCH,
    _STATS_SPREAD,
    _STATS_SPREAD_MAX,
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    OPERATOR,
    _Connection,
    _Counters,
    _SlowClient,
    _TokenBucket,
    close_websocket,
    error_frame,
    refuse,
)
from ._fleet_scope import FleetFrameEvent, FleetScope
from ._guards import LogLimiter

log = logging.getLogger("rakka_trio.control")


class Feed:
    """The admitted connections of one server and everything sent to them (internal)."""

    def __init__(
        self,
        sup: Supervisor | None,
        *,
        fleet: FleetScope | None = None,
        counters: _Counters,
        log_limiter: LogLimiter,
        max_message_size: int,
        command_rate: float,
        command_burst: int,
        event_buffer: int,
        send_timeout: float,
    ) -> None:
        self._sup = sup  # None: a fleet server, whose connections are all fleet-scope
        self._fleet = fleet
        self._counters = counters
        self._log = log_limiter
        self._max_message_size = max_message_size
        self._command_rate = command_rate
        self._command_burst = command_burst
        self._event_buffer = event_buffer
        self._drain_cap = 4 * event_buffer
        self._send_timeout = send_timeout
        self.connections: set[_Connection] = set()
        self._clients_present = trio.Event()  # set while any connection is being served
        self._encoded: OrderedDict[int, tuple[Event, str | None]] = OrderedDict()

    async def serve(self, conn: _Connection) -> None:
        """Welcome an admitted connection and serve it until it ends."""
        self.connections.add(conn)
        self._clients_present.set()
        try:
            # Subscribe before taking the snapshot, so nothing that happens in between is
            # lost. Stats do not come through here (see broadcast_stats).
            async with self._subscribe(conn) as sub:
                await self._serve_subscribed(conn, sub)
        finally:
            if self._fleet is not None:
                self._fleet.detach(conn)
            self.connections.discard(conn)
            if not self.connections:
                self._clients_present = trio.Event()

    def _subscribe(self, conn: _Connection) -> AbstractAsyncContextManager[Subscription]:
        """The events ``conn`` is fed: its supervisor's, or every node's in fleet scope."""
        if conn.scope == proto.FLEET and self._fleet is not None:
            return self._fleet.subscribe(conn, self._event_buffer)
        assert self._sup is not None  # admission gives a fleet server fleet scope only
        return self._sup.open_subscription(buffer=self._event_buffer, stats=False)

    async def _welcome(self, conn: _Connection) -> proto.WelcomeFrame:
        assert conn.role is not None
        if conn.scope == proto.FLEET and self._fleet is not None:
            return await self._fleet.welcome(conn.role)
        assert self._sup is not None
        return proto.WelcomeFrame(
            protocol=proto.PROTOCOL_VERSION,
            role=conn.role,
            server=f"rakka-trio/{__version__}",
            stats_interval=self._sup.config.stats_interval,
            snapshot=proto.snapshot_from_statistics(self._sup.statistics()),
            # Taken with the snapshot, after subscribing: no event is in both or in neither.
            history=proto.history_frames(self._sup.history()),
        )

    async def _serve_subscribed(self, conn: _Connection, sub: Subscription) -> None:
        welcome = await self._welcome(conn)
        conn.state_at = trio.current_time()  # stats older than the welcome's snapshot: skip
        try:
            await self._send(conn, proto.encode(welcome))
        except _SlowClient:
            await self._drop_slow(conn)
            return
        log.info("control: %s connected as %s (connection %d)", conn.actor, conn.role, conn.id)
        replies_send, replies_recv = trio.open_memory_channel[proto.ServerFrame](_REPLY_BUFFER)
        writer_done = trio.Event()
        abuse: str | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                self._write_frames, conn, sub, replies_recv, nursery.cancel_scope, writer_done
            )
            async with replies_send:
                abuse = await self._read_frames(conn, replies_send)
            # The reply queue is closed: let the writer flush what is queued (answers to a
            # flood included, so the client learns why it is being cut off), briefly.
            if conn.wake is not None:
                conn.wake.cancel()
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await writer_done.wait()
            nursery.cancel_scope.cancel()
        if abuse is not None:
            await close_websocket(conn.ws, CLOSE_POLICY_VIOLATION, abuse)
        log.info("control: %s disconnected (connection %d)", conn.actor, conn.id)

    # --- the two per-connection tasks ------------------------------------------------------

    async def _read_frames(
        self, conn: _Connection, replies: trio.MemorySendChannel[proto.ServerFrame]
    ) -> str | None:
        """Answer frames until the client leaves (``None``) or must be cut off (the close
        reason)."""
        bucket = _TokenBucket(self._command_rate, self._command_burst)
        while True:
            try:
                message = await conn.ws.get_message()
            except ConnectionClosed:
                return None
            if not bucket.take():
                conn.strikes += 1
                if conn.strikes > self._command_burst:
                    # Still flooding after a whole burst's worth of rate_limited errors.
                    self._counters.closed_for_abuse += 1
                    self._warn(conn, "closing %s: frame flood", conn.actor)
                    return "flood: too many frames"
                # Parse refused frames only to echo their id, and only if they are small.
                small = isinstance(message, str) and len(message) <= self._max_message_size
                msg_id = proto.peek_id(message) if small and isinstance(message, str) else None
                reply: proto.ServerFrame = error_frame(
                    msg_id,
                    proto.ErrorCode.RATE_LIMITED,
                    f"too many frames: at most {self._command_rate:g} per second "
                    f"(bursts of {self._command_burst}); this one was not processed",
                )
            else:
                conn.strikes = 0
                reply = await self._answer(conn, message)
            await replies.send(reply)
            if conn.wake is not None:
                conn.wake.cancel()  # the writer is idle, waiting for events: wake it

    async def _write_frames(
        self,
        conn: _Connection,
        sub: Subscription,
        replies: trio.MemoryReceiveChannel[proto.ServerFrame],
        scope: trio.CancelScope,
        done: trio.Event,
    ) -> None:
        """The only task that sends after the welcome: events first, then the latest stats,
        then one answer. Ending for any reason ends the connection (``scope``)."""
        try:
            stats_turn = True
            async with replies:
                while True:
                    # Every event already queued goes out before the next answer, so an ack
                    # follows the events its command caused. The cap keeps a steady stream of
                    # events from starving the answers.
                    sent = 0
                    while sent < self._drain_cap:
                        try:
                            event = sub.receive_nowait()
                        except trio.WouldBlock:
                            break
                        await self._send_event(conn, event)
                        sent += 1
                    if conn.stats is not None and stats_turn:
                        await self._send_stats(conn)
                        # Events that arrived meanwhile go first, then an answer gets its
                        # turn: fast stats never starve the answers.
                        stats_turn = False
                        continue
                    stats_turn = True
                    try:
                        frame = replies.receive_nowait()
                    except trio.WouldBlock:
                        pass
                    except trio.EndOfChannel:
                        return  # the reader has finished
                    else:
                        if isinstance(frame, proto.ErrorFrame):
                            self._counters.errors_sent += 1
                        await self._send(conn, proto.encode(frame))
                        continue
                    if sent or conn.stats is not None:
                        continue  # more may have arrived while we were sending
                    waited = await self._wait_for_event(conn, sub)
                    if waited is not None:
                        await self._send_event(conn, waited)
        except trio.EndOfChannel:
            # The subscription only ends when the supervisor shuts down.
            await refuse(
                conn.ws,
                self._counters,
                proto.ErrorCode.SHUTTING_DOWN,
                "the supervisor is shutting down",
                CLOSE_GOING_AWAY,
                count_abuse=False,
            )
        except ConnectionClosed:
            pass
        except _SlowClient:
            await self._drop_slow(conn)
        finally:
            done.set()
            scope.cancel()

    async def _wait_for_event(self, conn: _Connection, sub: Subscription) -> Event | None:
        """Wait for the next event; ``None`` if the reader queued an answer or a stats frame
        arrived meanwhile (both cancel ``conn.wake``). ``Subscription.receive`` consumes
        nothing when cancelled."""
        event: Event | None = None
        with trio.CancelScope() as wake:
            conn.wake = wake
            try:
                event = await sub.receive()
            finally:
                conn.wake = None
        return event

    async def _send_event(self, conn: _Connection, event: Event) -> None:
        if isinstance(event, Lagged):
            self._counters.events_dropped += event.dropped
        elif isinstance(event, Transition | EndpointAdded | EndpointRemoved):
            conn.state_at = max(conn.state_at, event.at)
        text = self._encode_event(event)
        if text is not None:
            await self._send(conn, text)

    async def _send_stats(self, conn: _Connection) -> None:
        assert conn.stats is not None
        (at, text), conn.stats = conn.stats, None
        # A state change newer than this snapshot already went out: the snapshot would show
        # the old state until the next tick. Skip it; the next one is due within an interval.
        if at >= conn.state_at:
            await self._send(conn, text)

    # --- the stats broadcast --------------------------------------------------------------

    async def broadcast_stats(self) -> None:
        """Hand every stats tick to every connection. Subscribed (so the supervisor builds
        stats at all) only while some connection is being served."""
        if self._sup is None:
            return  # a fleet server: FleetScope.run feeds its connections
        while True:
            await self._clients_present.wait()
            async with self._sup.open_subscription(buffer=8, stats=True) as sub:
                while self.connections:
                    try:
                        event = await sub.receive()
                    except trio.EndOfChannel:
                        return  # the supervisor has stopped
                    if not isinstance(event, Stats):
                        continue
                    try:
                        await self._spread_stats(event)
                    except Exception as exc:
                        # This task serves every connection: a bad tick costs that tick only.
                        self._log.log(
                            log, logging.ERROR, "stats", "control: stats broadcast failed",
                            exc_info=exc,
                        )  # fmt: skip

    async def _spread_stats(self, event: Stats) -> None:
        """Encode the tick once, then offer it to the connections in batches spread over a
        fraction of the interval, so the sends do not all compete with the application at
        the same instant."""
        frame = proto.frame_from_event(event)
        if frame is None:
            return
        text = proto.encode(frame)
        self._counters.stats_broadcasts += 1
        targets = [conn for conn in self.connections if conn.scope == proto.NODE]
        batches = math.ceil(len(targets) / _STATS_BATCH)
        assert self._sup is not None
        window = min(_STATS_SPREAD * self._sup.config.stats_interval, _STATS_SPREAD_MAX)
        start = trio.current_time()
        for i in range(batches):
            if i:
                await trio.sleep_until(start + window * i / batches)
            for conn in targets[i * _STATS_BATCH : (i + 1) * _STATS_BATCH]:
                conn.offer_stats(event.at, text)

    # --- frames and commands --------------------------------------------------------------

    async def _answer(self, conn: _Connection, message: str | bytes) -> proto.ServerFrame:
        """The reply to one frame within the rate limit: always an ack or an error."""
        problem = frame_problem(message, self._max_message_size)
        if problem is not None:
            return error_frame(None, *problem)
        assert isinstance(message, str)
        try:
            msg = proto.decode_client_message(message)
        except proto.ProtocolError as exc:
            return error_frame(exc.id, exc.code, exc.message)
        if isinstance(msg, proto.Hello):
            return error_frame(None, proto.ErrorCode.UNEXPECTED, "hello was already received")
        fleet_scope = msg.scope == proto.FLEET
        if isinstance(msg, proto.GetState) and not fleet_scope:
            return proto.AckFrame(id=msg.id, command=msg.TYPE, snapshot=self._node_snapshot())
        if conn.role != OPERATOR and not isinstance(msg, proto.GetState):
            self._warn(conn, "refused %s from viewer %s", msg.TYPE, conn.actor)
            return error_frame(
                msg.id,
                proto.ErrorCode.FORBIDDEN,
                "this connection is read-only (viewer); commands need the operator token",
            )
        if fleet_scope:
            if self._fleet is None:
                return error_frame(
                    msg.id, proto.ErrorCode.NO_FLEET, "this server has no fleet (scope fleet)"
                )
            return await self._fleet.answer(conn, msg)
        assert not isinstance(msg, proto.GetState)
        return self._execute(conn, msg)

    def _node_snapshot(self) -> proto.Snapshot:
        if self._sup is None:  # a fleet server holds no endpoints of its own
            node = self._fleet.fleet.node_id if self._fleet is not None else "?"
            return proto.Snapshot(node_id=node, wall=round(time.time(), 3), endpoints=[])
        return proto.snapshot_from_statistics(self._sup.statistics())

    def _execute(
        self, conn: _Connection, msg: proto.ForceOpen | proto.Reset | proto.Disable
    ) -> proto.ServerFrame:
        sup = self._sup
        if sup is None:
            return error_frame(
                msg.id,
                proto.ErrorCode.UNKNOWN_ENDPOINT,
                f"unknown endpoint {msg.endpoint!r}: this fleet server holds no endpoints of "
                'its own; send the command with "scope": "fleet" (the CLI\'s --fleet)',
            )
        reason = redact(msg.reason) if msg.reason is not None else None
        try:
            if isinstance(msg, proto.ForceOpen):
                sup.force_open(msg.endpoint, msg.duration, reason, actor=conn.actor)
            elif isinstance(msg, proto.Disable):
                sup.disable(msg.endpoint, msg.duration, reason, actor=conn.actor)
            else:
                sup.reset(msg.endpoint, reason, actor=conn.actor)
            state = sup.breaker(msg.endpoint).state.value
        except UnknownEndpoint:
            known = sup.endpoint_names
            listed = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
            return error_frame(
                msg.id,
                proto.ErrorCode.UNKNOWN_ENDPOINT,
                f"unknown endpoint {msg.endpoint!r} (known: {listed or 'none'})",
            )
        except (ValueError, RakkaError) as exc:
            return error_frame(msg.id, proto.ErrorCode.INVALID, str(exc))
        except Exception:
            log.exception("control: %s from %s failed", msg.TYPE, conn.actor)
            return error_frame(
                msg.id, proto.ErrorCode.INTERNAL, "the command failed; see the server log"
            )
        self._counters.commands += 1
        return proto.AckFrame(id=msg.id, command=msg.TYPE, endpoint=msg.endpoint, state=state)

    def _encode_event(self, event: Event) -> str | None:
        """The frame text for an event, encoded once however many connections send it."""
        if isinstance(event, FleetFrameEvent):
            return event.text  # encoded once by the fleet feed
        if isinstance(event, Lagged):  # per-connection by nature: nothing to share
            frame = proto.frame_from_event(event)
            return None if frame is None else proto.encode(frame)
        key = id(event)
        hit = self._encoded.get(key)
        # The cache holds the event itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is event:
            return hit[1]
        frame = proto.frame_from_event(event)
        text = None if frame is None else proto.encode(frame)
        self._encoded[key] = (event, text)
        if len(self._encoded) > _ENCODE_CACHE:
            self._encoded.popitem(last=False)
        return text

    # --- sending and closing --------------------------------------------------------------

    async def _send(self, conn: _Connection, text: str) -> None:
        with trio.move_on_after(self._send_timeout) as scope:
            await conn.ws.send_message(text)
        if scope.cancelled_caught:
            raise _SlowClient

    async def _drop_slow(self, conn: _Connection) -> None:
        self._counters.closed_for_abuse += 1
        self._warn(
            conn, "closing %s: not reading (a send took over %gs)", conn.actor, self._send_timeout
        )
        # No grace period: a client that is not reading will not read a close frame either.
        await close_websocket(conn.ws, CLOSE_POLICY_VIOLATION, "not reading", grace=0.0)

    def _warn(self, conn: _Connection, message: str, *args: object) -> None:
        """A WARNING about a connection, at most one per peer address per interval."""
        key = conn.peer.rpartition(":")[0]
        self._log.log(log, logging.WARNING, f"conn:{key}", "control: " + message, *args)
