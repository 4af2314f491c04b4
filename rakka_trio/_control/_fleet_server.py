"""A control server for a whole fleet, with no endpoints of its own (the Turbine role).

``rakka-trio fleet-serve`` runs it: operators connect to one address and watch or command
every node, without picking one. It is built on :func:`~rakka_trio.open_fleet` (an observer:
never registered, never expected to ack), so it needs no :class:`~rakka_trio.Supervisor`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from .._credentials import Secret
from ._server import ControlServer, build_server, run_server

if TYPE_CHECKING:
    from .._fleet import Fleet

__all__ = ["serve_fleet_control"]


async def serve_fleet_control(
    fleet: Fleet,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | Secret | None,
    allow_viewers: bool = False,
    allowed_origins: Iterable[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 64 * 1024,
    max_connections: int = 64,
    max_unauthenticated_per_ip: int = 8,
    command_rate: float = 10.0,
    command_burst: int = 20,
    event_buffer: int = 256,
    hello_timeout: float = 10.0,
    send_timeout: float = 30.0,
    task_status: trio.TaskStatus[ControlServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane of ``fleet`` (from :func:`~rakka_trio.open_fleet`) until
    cancelled: every connection is served the fleet scope (the welcome, ``stats`` and events
    of every node), and commands sent with ``"scope": "fleet"`` act on every node and are
    acknowledged with ``nodes_acked``/``nodes_missing``. Commands without a scope are
    answered ``unknown_endpoint``: this server has no endpoints of its own.

    ``srv = await nursery.start(functools.partial(serve_fleet_control, fleet, host, port,
    token=t))``; the options are those of :func:`~rakka_trio.serve_control`.
    """
    server = build_server(
        None,
        fleet,
        token=token,
        allow_viewers=allow_viewers,
        allowed_origins=allowed_origins,
        tls=ssl_context is not None,
        max_message_size=max_message_size,
        max_connections=max_connections,
        max_unauthenticated_per_ip=max_unauthenticated_per_ip,
        command_rate=command_rate,
        command_burst=command_burst,
        event_buffer=event_buffer,
        hello_timeout=hello_timeout,
        send_timeout=send_timeout,
    )
    await run_server(server, host, port, ssl_context, task_status)
