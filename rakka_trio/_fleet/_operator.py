"""The operator side of a fleet link: commands and their acks, the fleet view, the audit
stream. These run on the link's current session client, in the caller's task; none of them is
on any request's path.
"""

from __future__ import annotations

import math
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs
import coredis
import trio
from coredis.tokens import PureToken

from ._errors import FleetUnavailable
from ._records import FleetOverride, parse_ack
from ._redis import redis_failure, reraise_without_redis_noise
from ._types import FleetEvent, FleetView
from ._view import build_view

if TYPE_CHECKING:
    from ._link import FleetLink

__all__ = ["AckWaiter", "issue_command", "read_recent_events", "read_view"]

ACK_POLL = 0.25  # a command re-reads its ack hash this often (pub/sub may drop an ack)
PRUNE_AFTER = 60.0  # members not re-registered for this long are dropped from the set


class AckWaiter:
    """The acks of one command this process issued, as they arrive."""

    def __init__(self) -> None:
        self.acks: dict[str, tuple[float, bool]] = {}
        self.changed = trio.Event()

    def add(self, node: str, applied_at: float, present: bool) -> None:
        """Record ``node``'s ack (the first one counts)."""
        if node not in self.acks:
            self.acks[node] = (applied_at, present)
            self.changed.set()


def _require_client(link: FleetLink) -> coredis.Redis[bytes]:
    client = link.session_client
    if client is None or not link.up:
        since = link.down_since
        when = time.strftime(" since %H:%M:%S", time.localtime(since)) if since else " (starting)"
        raise FleetUnavailable(
            f"fleet {link.config.name!r} link is down{when}: the command was not sent "
            "(node-scope commands still work)"
        )
    return client


def _members(link: FleetLink, pipe: Any) -> Any:
    """Queue the pruning of long-gone members and the member read on ``pipe``."""
    pipe.zremrangebyscore(link.keys.nodes, 0, time.time() - PRUNE_AFTER)
    return pipe.zrange(link.keys.nodes, 0, -1)


async def _live_nodes(link: FleetLink, client: coredis.Redis[bytes]) -> list[str]:
    """Registered nodes whose record has not expired."""
    async with client.pipeline(transaction=False) as pipe:
        members = _members(link, pipe)
    link.commands_sent += 2
    names = [m.decode("utf-8", "replace") for m in await members]
    if not names:
        return []
    values = await client.mget([link.keys.node(n) for n in names])
    link.commands_sent += 1
    return [n for n, v in zip(names, values, strict=True) if v is not None]


def _audit_fields(link: FleetLink, override: FleetOverride) -> dict[str, str]:
    fields = {
        "kind": "command",
        "node": link.node_id,
        "at": repr(override.issued_at),
        "scope": "fleet",
        "endpoint": override.endpoint,
        "command": override.command,
        "actor": override.actor,
        "id": override.id,
        "origin": override.origin,
    }
    if override.reason is not None:
        fields["reason"] = override.reason
    if override.duration is not None:
        fields["duration"] = repr(override.duration)
    return fields


async def issue_command(
    link: FleetLink, override: FleetOverride, wait: float
) -> tuple[list[str], dict[str, tuple[float, bool]]]:
    """Store ``override``, audit it and broadcast it in one transaction, then wait up to
    ``wait`` seconds for the live nodes' acks; returns (the live nodes, the acks by node)."""
    client = _require_client(link)
    waiter = link.waiters[override.id] = AckWaiter()
    try:
        try:
            expected = await _live_nodes(link, client)
            record = override.to_json()
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(link.keys.overrides, {override.endpoint: record})
                pipe.xadd(
                    link.keys.events,
                    _audit_fields(link, override),
                    trim_strategy=PureToken.MAXLEN,
                    threshold=link.config.stream_maxlen,
                    trim_operator=PureToken.APPROXIMATELY,
                )
                pipe.publish(link.keys.commands, record)
            link.commands_sent += 5  # MULTI, three commands, EXEC
        except BaseException as exc:
            error = redis_failure(exc)
            if error is None:
                reraise_without_redis_noise(exc)
            link.session_failed(error)
            raise FleetUnavailable(
                f"fleet {link.config.name!r}: the command was not stored ({error})"
            ) from None
        await _await_acks(link, client, override.id, waiter, set(expected), wait)
    finally:
        del link.waiters[override.id]
    return expected, dict(waiter.acks)


async def _await_acks(
    link: FleetLink,
    client: coredis.Redis[bytes],
    command_id: str,
    waiter: AckWaiter,
    expected: set[str],
    wait: float,
) -> None:
    deadline = trio.current_time() + wait
    while not expected <= waiter.acks.keys():
        now = trio.current_time()
        if now >= deadline:
            break
        with trio.move_on_at(min(deadline, now + ACK_POLL)) as poll:
            await waiter.changed.wait()
            waiter.changed = trio.Event()
        if poll.cancelled_caught:
            await _read_acks(link, client, command_id, waiter)
    if not expected <= waiter.acks.keys():
        await _read_acks(link, client, command_id, waiter)  # the last word: the ack hash


async def _read_acks(
    link: FleetLink, client: coredis.Redis[bytes], command_id: str, waiter: AckWaiter
) -> None:
    try:
        raw = await client.hgetall(link.keys.acks(command_id))
    except BaseException as exc:
        if redis_failure(exc) is None:
            reraise_without_redis_noise(exc)
        return
    link.commands_sent += 1
    for value in raw.values():
        parsed = parse_ack(value)
        if parsed is not None and parsed[0] == command_id:
            waiter.add(parsed[1], parsed[2], parsed[3])


async def read_view(link: FleetLink) -> FleetView:
    """The fleet as Redis shows it now; the last view read (``fresh=False``) when the link
    is down or the read fails."""
    client = link.session_client
    if client is not None and link.up:
        try:
            async with client.pipeline(transaction=False) as pipe:
                members = _members(link, pipe)
                overrides = pipe.hgetall(link.keys.overrides)
            link.commands_sent += 3
            names = [m.decode("utf-8", "replace") for m in await members]
            records: tuple[Any, ...] = ()
            if names:
                records = await client.mget([link.keys.node(n) for n in names])
                link.commands_sent += 1
            view = build_view(
                fleet=link.config.name,
                records=records,
                overrides=await overrides,
                now=time.time(),
                link_up=True,
                link_down_since=None,
            )
            link.last_view = view
            return view
        except BaseException as exc:
            error = redis_failure(exc)
            if error is None:
                reraise_without_redis_noise(exc)
            link.session_failed(error)
    return _stale_view(link)


def _stale_view(link: FleetLink) -> FleetView:
    """The last view read, marked stale; a node shows the overrides it holds (the last it
    knew), which may be newer than that view."""
    now = time.time()
    since = link.down_since if link.down_since is not None else now
    view = link.last_view
    if view is None:
        view = build_view(
            fleet=link.config.name,
            records=(),
            overrides={},
            now=now,
            link_up=False,
            link_down_since=since,
        )
    overrides = dict(view.overrides)
    if link.role == "node":
        overrides = {name: o for name, o in link.known_overrides().items() if o.active(now)}
    return attrs.evolve(
        view,
        link_up=False,
        link_down_since=since,
        fresh=False,
        overrides=MappingProxyType(overrides),
    )


async def read_recent_events(link: FleetLink, count: int, after: str | None) -> list[FleetEvent]:
    """The last ``count`` entries of the audit stream (or the first ``count`` after the entry
    ``after``), oldest first."""
    client = _require_client(link)
    try:
        if after is None:
            entries = tuple(
                reversed(await client.xrevrange(link.keys.events, "+", "-", count=count))
            )
        else:  # "(" makes the start exclusive
            entries = await client.xrange(link.keys.events, f"({after}", "+", count=count)
    except BaseException as exc:
        error = redis_failure(exc)
        if error is None:
            reraise_without_redis_noise(exc)
        link.session_failed(error)
        raise FleetUnavailable(f"fleet {link.config.name!r}: {error}") from None
    link.commands_sent += 1
    out: list[FleetEvent] = []
    for entry in entries:
        event = _fleet_event(entry)
        if event is not None:
            out.append(event)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fleet_event(entry: Any) -> FleetEvent | None:
    try:
        identifier, raw_fields = entry[0], entry[1]
        fields = {_text(k): _text(v) for k, v in dict(raw_fields).items()}
        at = float(fields.pop("at", "nan"))
        if not math.isfinite(at):
            return None
        return FleetEvent(
            id=_text(identifier),
            kind=fields.pop("kind", ""),
            node=fields.pop("node", ""),
            at=at,
            endpoint=fields.pop("endpoint", ""),
            fields=MappingProxyType(fields),
        )
    except (IndexError, TypeError, ValueError):
        return None
