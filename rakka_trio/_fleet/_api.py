"""The fleet's public face: ``sup.fleet`` and :func:`open_fleet` for processes with no
endpoints (an operator console, a fleet-wide control server).

Importing this module loads no Redis client: the link (and ``coredis``) is imported when a
fleet is actually configured or opened.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING

import trio

from .._breaker import check_duration
from .._config import FleetConfig
from .._extras import require
from .._redact import redact
from ._errors import FleetError, InvalidFleetCommand
from ._host import SupervisorHost
from ._records import MAX_ACTOR, MAX_REASON, FleetOverride, new_command_id
from ._types import FleetCommandResult, FleetEvent, FleetLinkStatistics, FleetView

if TYPE_CHECKING:
    from .._supervisor import Supervisor
    from ._link import FleetLink

__all__ = ["Fleet", "fleet_for_supervisor", "no_fleet_error", "open_fleet"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_STREAM_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


class Fleet:
    """One process's handle on its fleet: fleet-wide commands, the fleet view, the audit
    stream. Obtain it as ``sup.fleet`` (a supervisor configured with
    ``SupervisorConfig(fleet=FleetConfig(...))``) or from :func:`open_fleet`.

    Commands store an override with its expiry in Redis and broadcast it; every live node
    applies it (a node that starts later applies it before serving) and acks. They return a
    :class:`FleetCommandResult` once every live node acked or after ``ack_timeout`` seconds
    (default ``FleetConfig.ack_timeout``), and raise :class:`FleetUnavailable` when the link
    is down. Nothing here is ever awaited by a request.
    """

    def __init__(self, link: FleetLink) -> None:
        self._link = link

    @property
    def name(self) -> str:
        """The fleet's name."""
        return self._link.config.name

    @property
    def node_id(self) -> str:
        """This process's id in the fleet."""
        return self._link.node_id

    @property
    def config(self) -> FleetConfig:
        """The fleet configuration in force."""
        return self._link.config

    @property
    def control_url(self) -> str | None:
        """The control server URL this node advertises to the fleet (``None``: none)."""
        return self._link.control_url

    def set_control_url(self, url: str | None) -> None:
        """Advertise this node's control server in its fleet record (from the next publish;
        credentials and query strings are stripped)."""
        if url is not None and not isinstance(url, str):
            raise TypeError("the control URL must be a string or None")
        self._link.set_control_url(url)

    # --- commands --------------------------------------------------------------------------

    async def force_open(
        self,
        endpoint: str,
        duration: float | None = None,
        reason: str | None = None,
        *,
        actor: str = "api",
        ack_timeout: float | None = None,
    ) -> FleetCommandResult:
        """Hold ``endpoint``'s breaker open on every node for ``duration`` seconds (``None``:
        until a fleet reset)."""
        return await self._command("force_open", endpoint, duration, reason, actor, ack_timeout)

    async def disable(
        self,
        endpoint: str,
        duration: float | None = None,
        reason: str | None = None,
        *,
        actor: str = "api",
        ack_timeout: float | None = None,
    ) -> FleetCommandResult:
        """Bypass ``endpoint``'s breaker on every node (always pass, still counting) for
        ``duration`` seconds or until a fleet reset."""
        return await self._command("disable", endpoint, duration, reason, actor, ack_timeout)

    async def reset(
        self,
        endpoint: str,
        reason: str | None = None,
        *,
        actor: str = "api",
        ack_timeout: float | None = None,
    ) -> FleetCommandResult:
        """Clear ``endpoint``'s fleet override and force-close its breaker on every node."""
        return await self._command("reset", endpoint, None, reason, actor, ack_timeout)

    async def _command(
        self,
        command: str,
        endpoint: str,
        duration: float | None,
        reason: str | None,
        actor: str,
        ack_timeout: float | None,
    ) -> FleetCommandResult:
        from ._operator import issue_command

        _check_command(endpoint, duration, reason, actor)
        wait = self._link.config.ack_timeout if ack_timeout is None else ack_timeout
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait < math.inf:
            raise InvalidFleetCommand(f"ack_timeout must be a positive number, got {wait!r}")
        now = time.time()
        override = FleetOverride(
            id=new_command_id(),
            command=command,
            endpoint=endpoint,
            issued_at=now,
            until=None if duration is None else now + duration,
            duration=None if duration is None else float(duration),
            # Operator text reaches every node, the stream and consoles: never a credential.
            reason=None if reason is None else redact(reason),
            actor=redact(actor),
            origin=self._link.node_id,
        )
        expected, acks = await issue_command(self._link, override, float(wait))
        acked = sorted(acks)
        return FleetCommandResult(
            command_id=override.id,
            command=command,
            endpoint=endpoint,
            issued_at=now,
            override=override,
            nodes_acked=tuple(acked),
            nodes_missing=tuple(sorted(set(expected) - set(acks))),
            acks=MappingProxyType({node: acks[node][0] for node in acked}),
            absent_on=tuple(node for node in acked if not acks[node][1]),
        )

    # --- reading -----------------------------------------------------------------------------

    async def view(self) -> FleetView:
        """Every node's last figures, aggregated per endpoint with state counts and a per-node
        breakdown. When the link is down this is the last view read, with ``fresh=False`` and
        ``link_down_since`` set; it never waits longer than one Redis timeout or two."""
        from ._operator import read_view

        return await read_view(self._link)

    async def recent_events(
        self, count: int = 200, *, after: str | None = None
    ) -> list[FleetEvent]:
        """Transitions and commands of the whole fleet, oldest first: the last ``count``, or
        with ``after`` (a :attr:`FleetEvent.id`) the first ``count`` that came after it — a
        console tails the stream by passing the last id it saw."""
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 10_000:
            raise InvalidFleetCommand(f"count must be an integer in 1..10000, got {count!r}")
        if after is not None and not (isinstance(after, str) and _STREAM_ID_RE.match(after)):
            raise InvalidFleetCommand(f"after must be a stream entry id, got {after!r}")
        from ._operator import read_recent_events

        return await read_recent_events(self._link, count, after)

    def statistics(self) -> FleetLinkStatistics:
        """This process's link: up or down since when, commands sent, overrides known."""
        return self._link.statistics()

    def __repr__(self) -> str:
        state = "up" if self._link.up else "down"
        return f"<Fleet {self.name!r} node={self.node_id!r} {self._link.role} link {state}>"


def _check_command(endpoint: str, duration: float | None, reason: str | None, actor: str) -> None:
    if not isinstance(endpoint, str) or not _NAME_RE.match(endpoint):
        raise InvalidFleetCommand(f"not a valid endpoint name: {endpoint!r}")
    try:
        check_duration(duration)
    except ValueError as exc:
        raise InvalidFleetCommand(str(exc)) from None
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidFleetCommand(f"reason must be a string of at most {MAX_REASON} characters")
    if not isinstance(actor, str) or not 0 < len(actor) <= MAX_ACTOR:
        raise InvalidFleetCommand(f"actor must be a string of 1-{MAX_ACTOR} characters")


def no_fleet_error() -> FleetError:
    """The error of ``sup.fleet`` on a supervisor without a fleet."""
    return FleetError(
        "no fleet is configured: use SupervisorConfig(redis_url=..., "
        "fleet=FleetConfig(name=...)) (see docs/fleet.md)"
    )


def fleet_for_supervisor(supervisor: Supervisor) -> tuple[Fleet, FleetLink] | None:
    """The fleet of a supervisor whose config has one, and the link the supervisor drives
    (``join`` before serving, ``run`` as a task, ``endpoint_added``); ``None`` otherwise."""
    config = supervisor.config
    if config.fleet is None:
        return None
    require("coredis", "redis", "the fleet")
    from ._link import FleetLink

    assert config.redis_url is not None  # SupervisorConfig checks it
    link = FleetLink(
        config=config.fleet,
        redis_url=config.redis_url,
        redis_timeout=config.redis_timeout,
        node_id=config.node_id,
        host=SupervisorHost(supervisor),
    )
    return Fleet(link), link


@asynccontextmanager
async def open_fleet(
    redis_url: str,
    fleet: str | FleetConfig,
    *,
    observer_id: str | None = None,
    redis_timeout: float = 0.25,
) -> AsyncIterator[Fleet]:
    """Observe and command a fleet without joining it (no endpoints, never counted as a node
    that must ack): ``async with rk.open_fleet(url, "prod") as fleet: ...``.

    Waits up to ``join_timeout`` for the link; when Redis is unreachable it still enters, and
    :meth:`Fleet.view` reports the link down (commands raise :class:`FleetUnavailable`).
    """
    import os
    import socket

    config = fleet if isinstance(fleet, FleetConfig) else FleetConfig(name=fleet)
    if not isinstance(redis_url, str) or not re.match(r"^rediss?://", redis_url):
        raise InvalidFleetCommand("redis_url must start with redis:// or rediss://")
    require("coredis", "redis", "the fleet")
    from ._link import FleetLink

    link = FleetLink(
        config=config,
        redis_url=redis_url,
        redis_timeout=redis_timeout,
        node_id=observer_id or f"observer:{socket.gethostname()}:{os.getpid()}",
        host=None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, name=f"fleet:{config.name}")
        with trio.move_on_after(config.join_timeout):
            await link.connected.wait()
        try:
            yield Fleet(link)
        finally:
            nursery.cancel_scope.cancel()
