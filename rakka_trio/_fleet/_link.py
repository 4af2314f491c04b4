"""The fleet link: one process's connection to its fleet through Redis (``coredis`` on Trio).

A *session* is one connected period: a client, a pub/sub subscription (the commands channel
and this process's ack channel), a reconcile of the stored overrides, then two tasks — the
reader applies commands as they arrive, the writer sends acks at once and, every
``publish_interval``, one pipeline: the node's record (registration and figures in one
``SET … PX``), a ``ZADD`` to the member set every tenth time, and the transitions gathered
since the last one (``XADD … MAXLEN ~``). Steady state is therefore a little over one command
per node per second, whatever the number of endpoints.

Any Redis failure ends the session; the link is then *down* (with the time it went down) and
reconnects with backoff. Nothing here is awaited by a request: overrides are applied through
the breaker handles' synchronous methods, so a node keeps its local behaviour and the
overrides it last knew while Redis is away. When the link comes back it reconciles: stored
overrides it has not applied are applied, and active ones Redis lost (a restart without
persistence) are stored again, newest first, so the fleet re-converges.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import time
from collections import deque
from typing import Any

import coredis
import trio
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from .._breaker import BreakerHandle
from .._config import FleetConfig
from .._events import Command, Event, Lagged, Transition
from .._version import __version__
from ._host import FleetHost, RollingRates
from ._operator import AckWaiter
from ._records import (
    ACK_TTL_MS,
    FleetKeys,
    FleetOverride,
    ack_json,
    parse_ack,
)
from ._redis import new_client, redis_failure, reraise_without_redis_noise
from ._types import FleetLinkChanged, FleetLinkStatistics, FleetView, wall_until
from ._view import node_record

__all__ = ["FleetLink"]

log = logging.getLogger("rakka_trio.fleet")

REGISTER_EVERY = 10  # heartbeats between two ZADDs to the member set (the record has a TTL)
PENDING_EVENTS = 1000  # transitions kept for Redis while it is away (oldest dropped)
EVENTS_PER_FLUSH = 200
PENDING_ACKS = 1000
RETRY_MIN, RETRY_MAX = 0.25, 2.0  # reconnection backoff (seconds)

# Store an override unless Redis already holds one at least as new (re-seeding after Redis
# lost its state must not overwrite a newer command another node stored meanwhile).
_RESEED = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and tonumber(obj['issued_at'])
     and tonumber(obj['issued_at']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def _safe_url(url: str | None) -> str | None:
    """A control URL without credentials or query (tokens never go to Redis)."""
    if url is None:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))[:256]


class FleetLink:
    """One process's link to the fleet (a node when ``host`` is given, else an observer)."""

    def __init__(
        self,
        *,
        config: FleetConfig,
        redis_url: str,
        redis_timeout: float,
        node_id: str,
        host: FleetHost | None,
    ) -> None:
        self.config = config
        self.keys = FleetKeys(config.key_prefix, config.name)
        self.node_id = node_id
        self.role = "node" if host is not None else "observer"
        self._host = host
        self._url = redis_url
        self.timeout = redis_timeout
        self.session_client: coredis.Redis[bytes] | None = None
        self._up = False
        self._down_since: float | None = None
        self._connected_at: float | None = None
        self._connects = 0
        self.commands_sent = 0
        self._heartbeats = 0
        self._applied_count = 0
        self._acks_sent = 0
        self._events_appended = 0
        self._events_dropped = 0
        self._known: dict[str, FleetOverride] = {}
        self._acks: deque[tuple[str, str, str]] = deque()  # (command id, origin, ack JSON)
        self._events: deque[dict[str, str]] = deque()
        self.waiters: dict[str, AckWaiter] = {}
        self._wake_writer = trio.Event()
        self.connected = trio.Event()  # set by the first session that comes up
        self._rates = RollingRates()
        self.last_view: FleetView | None = None
        self._started = time.time()
        self._hostname = socket.gethostname()
        self.control_url: str | None = None
        self._session_scope: trio.CancelScope | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while a session is connected."""
        return self._up

    @property
    def down_since(self) -> float | None:
        """Unix time the link went down (``None`` while up or before the first attempt)."""
        return self._down_since

    def known_overrides(self) -> dict[str, FleetOverride]:
        """The fleet overrides this process applied or noted, by endpoint."""
        return dict(self._known)

    def set_control_url(self, url: str | None) -> None:
        """Advertise this node's control server (credentials and query are stripped)."""
        self.control_url = _safe_url(url)

    def statistics(self) -> FleetLinkStatistics:
        """A frozen snapshot of the link."""
        from types import MappingProxyType

        return FleetLinkStatistics(
            fleet=self.config.name,
            node_id=self.node_id,
            role=self.role,
            link_up=self._up,
            link_down_since=self._down_since,
            connected_at=self._connected_at,
            connects=self._connects,
            redis_commands=self.commands_sent,
            heartbeats=self._heartbeats,
            commands_applied=self._applied_count,
            acks_sent=self._acks_sent,
            events_appended=self._events_appended,
            events_dropped=self._events_dropped,
            control_url=self.control_url,
            overrides=MappingProxyType(dict(self._known)),
        )

    def _publish(self, event: Event) -> None:
        if self._host is not None:
            self._host.publish(event)

    def _mark_up(self) -> None:
        self._up = True
        self.connected.set()
        self._connects += 1
        self._connected_at = time.time()
        if self._down_since is not None:
            log.warning("fleet %s: link is back", self.config.name)
            self._publish(
                FleetLinkChanged(
                    at=trio.current_time(), fleet=self.config.name, up=True, since=time.time()
                )
            )
        self._down_since = None

    def _mark_down(self, error: str) -> None:
        self._up = False
        self.session_client = None
        if self._down_since is None:
            self._down_since = time.time()
            log.warning(
                "fleet %s: link down (%s); keeping local behaviour and the last known overrides",
                self.config.name,
                error,
            )
            self._publish(
                FleetLinkChanged(
                    at=trio.current_time(),
                    fleet=self.config.name,
                    up=False,
                    since=self._down_since,
                    error=error,
                )
            )

    def _new_client(self) -> coredis.Redis[bytes]:
        return new_client(self._url, self.timeout)

    def session_failed(self, error: str) -> None:
        """A read or command on an observer's session failed (Redis down or stalled): mark
        the link down now and end the session, which reconnects with backoff. An observer
        sends nothing on its own, so without this a stalled Redis would go unnoticed. (A
        node's heartbeat notices within a publish interval; one slow read by a console must
        not tear down the session a node receives its commands on.)"""
        if self.role == "node":
            return
        if self._up:
            self._mark_down(error)
        if self._session_scope is not None:
            self._session_scope.cancel()

    # --- overrides -----------------------------------------------------------------------------

    def endpoint_added(self, name: str) -> None:
        """Apply the fleet override known for ``name`` to its new breaker (synchronously,
        before any request can reach it)."""
        override = self._known.get(name)
        handle = self._host.breaker_for(name) if self._host is not None else None
        if override is not None and handle is not None and override.active(time.time()):
            self._act(handle, override, None, live=False)

    def _apply(self, override: FleetOverride, *, live: bool) -> bool:
        """Apply ``override`` to this node; ``False`` when it has no such endpoint (noted
        for later). ``live``: a command as it was issued (a reset always force-closes); else
        a reconcile, which only undoes what the fleet did here."""
        previous = self._known.get(override.endpoint)
        self._known[override.endpoint] = override
        handle = self._host.breaker_for(override.endpoint) if self._host is not None else None
        if handle is None:
            return False
        self._act(handle, override, previous, live=live)
        self._applied_count += 1
        return True

    @staticmethod
    def _act(
        handle: BreakerHandle,
        override: FleetOverride,
        previous: FleetOverride | None,
        *,
        live: bool,
    ) -> None:
        now = time.time()
        actor = f"fleet:{override.actor}"
        if override.command == "reset":
            if live or (previous is not None and previous.active(now)):
                handle.reset(reason=override.reason, actor=actor)
        elif override.active(now):
            remaining = None if override.until is None else override.until - now
            if override.command == "force_open":
                handle.force_open(remaining, reason=override.reason, actor=actor)
            else:
                handle.disable(remaining, reason=override.reason, actor=actor)
        elif previous is not None and previous.active(now) and previous.id != override.id:
            # A newer override that has already expired replaced the one in force here.
            handle.reset(reason="fleet override expired", actor=actor)

    def _queue_ack(self, override: FleetOverride, present: bool) -> None:
        if len(self._acks) >= PENDING_ACKS:
            self._acks.popleft()
        self._acks.append(
            (
                override.id,
                override.origin,
                ack_json(override.id, self.node_id, time.time(), present),
            )
        )
        self._wake_writer.set()

    def _on_command(self, raw: Any) -> None:
        override = FleetOverride.from_raw(raw)
        if override is None:
            log.warning("fleet %s: ignored a malformed command", self.config.name)
            return
        present = self._apply(override, live=True)
        self._queue_ack(override, present)

    def _on_ack(self, raw: Any) -> None:
        parsed = parse_ack(raw)
        if parsed is None:
            return
        command_id, node, applied_at, present = parsed
        waiter = self.waiters.get(command_id)
        if waiter is not None:
            waiter.add(node, applied_at, present)

    async def _reconcile(self, client: coredis.Redis[bytes]) -> None:
        """Apply the stored overrides this node has not applied; store again the active ones
        Redis lost."""
        raw = await client.hgetall(self.keys.overrides)
        self.commands_sent += 1
        stored: dict[str, FleetOverride] = {}
        for field, value in raw.items():
            override = FleetOverride.from_raw(value)
            name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
            if override is not None and override.endpoint == name:
                stored[name] = override
        now = time.time()
        reseed: list[FleetOverride] = []
        for name, override in stored.items():
            mine = self._known.get(name)
            if mine is not None and mine.id == override.id:
                continue
            if mine is not None and mine.issued_at > override.issued_at:
                reseed.append(mine)
                continue
            present = self._apply(override, live=False)
            if self.role == "node":
                self._queue_ack(override, present)
        for name, mine in self._known.items():
            if name not in stored and mine.active(now):
                reseed.append(mine)
        for override in reseed:
            log.warning(
                "fleet %s: Redis lost the override of %s; storing it again",
                self.config.name,
                override.endpoint,
            )
            await client.eval(
                _RESEED,
                keys=[self.keys.overrides],
                args=[override.endpoint, repr(override.issued_at), override.to_json()],
            )
            self.commands_sent += 1

    # --- the task --------------------------------------------------------------------------------

    async def join(self) -> None:
        """Read and apply the fleet's active overrides, bounded by ``join_timeout`` (the
        supervisor awaits this before it serves its first request)."""
        error: str | None = None
        with trio.move_on_after(self.config.join_timeout) as scope:
            try:
                async with self._new_client() as client:
                    await self._reconcile(client)
            except BaseException as exc:
                error = redis_failure(exc)
                if error is None:
                    reraise_without_redis_noise(exc)
        if scope.cancelled_caught:
            error = f"no answer within join_timeout={self.config.join_timeout:g}s"
        if error is not None:
            self._mark_down(error)
            log.warning(
                "fleet %s: started without the fleet's overrides (%s); they apply when the "
                "link comes up",
                self.config.name,
                error,
            )

    async def run(self) -> None:
        """Stay connected to the fleet until cancelled (a supervised task); leave on exit."""
        try:
            async with trio.open_nursery() as nursery:
                if self._host is not None:
                    nursery.start_soon(self._gather_events, self._host)
                delay = RETRY_MIN
                while True:
                    started = trio.current_time()
                    error = "a read on the session failed"  # when session_failed ended it
                    with trio.CancelScope() as self._session_scope:
                        error = await self._session()
                    self._session_scope = None
                    self._mark_down(error)
                    if trio.current_time() - started > 10 * RETRY_MAX:
                        delay = RETRY_MIN  # it was up a good while: retry soon
                    await trio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._up = False
            self.session_client = None
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout * 2):
                await self._leave()

    async def _session(self) -> str:
        """One connected period; returns the Redis failure that ended it."""
        try:
            async with self._new_client() as client:
                channels = [self.keys.ack_channel(self.node_id)]
                if self.role == "node":
                    channels.append(self.keys.commands)
                async with client.pubsub(
                    channels=channels,
                    retry_policy=NoRetryPolicy(),
                    ignore_subscribe_messages=True,
                    subscription_timeout=max(1.0, 4 * self.timeout),
                    max_idle_seconds=60,
                ) as pubsub:
                    self.commands_sent += 1  # SUBSCRIBE
                    # Subscribed first, then read: a command issued in between is in both.
                    if self.role == "node":
                        await self._reconcile(client)
                        await self._flush(client, beat=True, register=True)
                    self.session_client = client
                    self._mark_up()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._read, pubsub)
                        nursery.start_soon(self._write, client)
        except BaseException as exc:
            error = redis_failure(exc)
            if error is None:
                reraise_without_redis_noise(exc)
            return error
        finally:
            self.session_client = None
        return "the session ended"  # pragma: no cover - the tasks above never return

    async def _read(self, pubsub: Any) -> None:
        commands = self.keys.commands.encode()
        while True:
            message = await pubsub.get_message()
            if message is None or message.get("type") != "message":
                continue
            channel = message.get("channel")
            if isinstance(channel, str):
                channel = channel.encode()
            if channel == commands:
                self._on_command(message.get("data"))
            else:
                self._on_ack(message.get("data"))

    async def _write(self, client: coredis.Redis[bytes]) -> None:
        interval = self.config.publish_interval
        next_beat = trio.current_time() + interval
        beats = 1  # the session's first heartbeat registered
        while True:
            with trio.move_on_at(next_beat):
                await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            now = trio.current_time()
            beat = self.role == "node" and now >= next_beat
            if beat:
                next_beat = max(next_beat + interval, now + interval / 2)
                beats += 1
            elif self.role != "node" and now >= next_beat:
                next_beat = now + interval
            await self._flush(client, beat=beat, register=beat and beats % REGISTER_EVERY == 0)

    async def _flush(self, client: coredis.Redis[bytes], *, beat: bool, register: bool) -> None:
        """Send queued acks and, on a heartbeat, the node record and pending transitions, in
        one pipeline."""
        acks = list(self._acks)
        events = list(self._events)[:EVENTS_PER_FLUSH] if beat else []
        if not acks and not beat:
            return
        now = time.time()
        sent = 0
        async with client.pipeline(transaction=False) as pipe:
            for command_id, origin, ack in acks:
                key = self.keys.acks(command_id)
                pipe.hset(key, {self.node_id: ack})
                pipe.pexpire(key, ACK_TTL_MS)
                pipe.publish(self.keys.ack_channel(origin), ack)
                sent += 3
            if beat:
                pipe.set(
                    self.keys.node(self.node_id),
                    self._record(now),
                    px=round(self.config.node_ttl * 1000),
                )
                sent += 1
                if register:
                    pipe.zadd(self.keys.nodes, {self.node_id: now})
                    sent += 1
                for fields in events:
                    pipe.xadd(
                        self.keys.events,
                        fields,
                        trim_strategy=PureToken.MAXLEN,
                        threshold=self.config.stream_maxlen,
                        trim_operator=PureToken.APPROXIMATELY,
                    )
                    sent += 1
        self.commands_sent += sent
        # Only now that Redis has them: drop what was sent (a failure keeps them queued).
        for _ in acks:
            self._acks.popleft()
        self._acks_sent += len(acks)
        if beat:
            self._heartbeats += 1
            for _ in events:
                self._events.popleft()
            self._events_appended += len(events)

    def _record(self, now: float) -> str:
        host = self._host
        figures = host.figures() if host is not None else {}
        self._rates.add(trio.current_time(), figures)
        return node_record(
            node_id=self.node_id,
            host=self._hostname,
            pid=os.getpid(),
            started=self._started,
            control_url=self.control_url,
            version=__version__,
            at=now,
            interval=self.config.publish_interval,
            endpoints=figures,
            overrides={name: o.id for name, o in self._known.items()},
        )

    async def _gather_events(self, host: FleetHost) -> None:
        """Keep this node's transitions and node-scope commands for the audit stream."""
        opened = host.open_subscription()
        if opened is None:
            return
        async with opened as subscription:
            async for event in subscription:
                if isinstance(event, Lagged):
                    self._events_dropped += event.dropped
                    continue
                fields = self._stream_fields(event)
                if fields is None:
                    continue
                if len(self._events) >= PENDING_EVENTS:
                    self._events.popleft()
                    self._events_dropped += 1
                self._events.append(fields)

    def _stream_fields(self, event: Event) -> dict[str, str] | None:
        base = {"node": self.node_id, "at": repr(event.wall)}
        if isinstance(event, Transition):
            fields = {
                "kind": "transition",
                **base,
                "endpoint": event.endpoint,
                "from": event.from_state.value,
                "to": event.to_state.value,
                "cause": event.cause,
                "consecutive_failures": str(event.consecutive_failures),
                "calls_in_window": str(event.calls_in_window),
                "trips": str(event.trips),
            }
            if event.failure_rate is not None:
                fields["failure_rate"] = repr(round(event.failure_rate, 4))
            if event.open_until is not None:
                # A Unix time (other machines read it), or "inf": until reset.
                until = wall_until(event.open_until, event.at, event.wall)
                fields["open_until"] = "inf" if until == math.inf else repr(until)
            if event.actor is not None:
                fields["actor"] = event.actor
            if event.reason is not None:
                fields["reason"] = event.reason
            return fields
        if isinstance(event, Command):
            fields = {
                "kind": "command",
                **base,
                "scope": "node",
                "endpoint": event.endpoint,
                "command": event.command,
                "actor": event.actor,
            }
            if event.reason is not None:
                fields["reason"] = event.reason
            if event.duration is not None:
                fields["duration"] = repr(event.duration)
            return fields
        return None

    async def _leave(self) -> None:
        """Deregister (a fresh short-lived client: cancellation tore the session down)."""
        if self.role != "node":
            return
        try:
            async with self._new_client() as client:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.delete([self.keys.node(self.node_id)])
                    pipe.zrem(self.keys.nodes, [self.node_id])
                self.commands_sent += 2
        except BaseException as exc:
            if redis_failure(exc) is None:
                reraise_without_redis_noise(exc)
