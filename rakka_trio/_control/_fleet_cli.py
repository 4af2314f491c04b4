"""The fleet on the command line: ``rakka-trio fleet-serve``, and ``--fleet`` for ``state``,
``events``, ``force-open``, ``reset`` and ``disable``.

``--fleet`` commands print each node's ack and exit with :data:`EXIT_NODES_MISSING` (6) when
some live node did not ack in time (the override stays stored in Redis: such a node applies
it when it comes back). ``fleet-serve`` is a control server that holds no endpoints and
serves the fleet scope, so operators need not pick a node.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from typing import Final

import trio

from . import _protocol as proto
from ._cli import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_USAGE,
    TOKEN_ENV,
    _clock,
    _error,
    _latency,
    _safe,
    _seconds,
)
from ._client import ControlClient

__all__ = [
    "EXIT_NODES_MISSING",
    "add_fleet_serve",
    "fleet_command",
    "fleet_state",
    "fleet_stats_line",
    "format_fleet",
    "run_fleet_serve",
]

EXIT_NODES_MISSING: Final = 6
"""A ``--fleet`` command reached some nodes but not all of them in time."""

_MAX_GRID_ENDPOINTS: Final = 8  # the per-node grid shows this many endpoints; --json has all


# --- state --fleet --------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ago(wall: float, now: float) -> str:
    return f"{_seconds(max(0.0, now - wall))} ago"


def _override(ep: proto.FleetEndpointState, now: float) -> str:
    o = ep.override
    if o is None:
        return "-"
    lasting = "until reset" if o.until is None else f"{_seconds(max(0.0, o.until - now))} left"
    text = f"{o.command} {lasting} by {o.actor}"
    return text + (f" ({o.reason})" if o.reason else "")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(_safe(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(_safe(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]


def format_fleet(snapshot: proto.FleetSnapshot, *, now: float | None = None) -> str:
    """The fleet as tables: one row per endpoint (state counts such as ``open on 3/20``, sums
    and medians over the nodes, the fleet override), then one row per node with each
    endpoint's state there."""
    now = time.time() if now is None else now
    nodes, endpoints = snapshot.nodes, snapshot.endpoints
    link = snapshot.link_status + ("" if snapshot.fresh else ", last view read")
    title = (
        f"fleet {_safe(snapshot.fleet)} at {_clock(snapshot.wall)}: {len(nodes)} "
        f"node{'s' if len(nodes) != 1 else ''}, {len(endpoints)} "
        f"endpoint{'s' if len(endpoints) != 1 else ''} (link {link})"
    )
    rows: list[tuple[str, ...]] = [
        ("ENDPOINT", "STATE", "STATES", "REQ/S", "ERR%", "IN-FLIGHT", "P50/P95", "P99 MAX",
         "REJECTED", "FLEET OVERRIDE"),
    ]  # fmt: skip
    for ep in endpoints:
        states = ", ".join(f"{n} {state}" for state, n in sorted(ep.states.items()))
        rows.append(
            (
                ep.name,
                ep.summary,
                states or "-",
                f"{ep.requests_per_second:g}",
                _percent(ep.error_rate),
                str(ep.in_flight) + (f" +{ep.queue_depth} queued" if ep.queue_depth else ""),
                f"{_latency(ep.latency_p50)}/{_latency(ep.latency_p95)}",
                _latency(ep.latency_p99_max),
                str(ep.rejected),
                _override(ep, now),
            )
        )
    lines = [title, *_table(rows)] if endpoints else [title]
    if nodes:
        shown = [ep.name for ep in endpoints[:_MAX_GRID_ENDPOINTS]]
        node_states = {
            (fig.node, ep.name): fig.state
            for ep in endpoints[:_MAX_GRID_ENDPOINTS]
            for fig in ep.per_node
        }
        grid: list[tuple[str, ...]] = [
            ("NODE", *(name.upper() for name in shown), "SEEN", "CONTROL")
        ]
        for node in nodes:
            seen = _ago(node.last_seen, now) + (" STALE" if node.stale else "")
            grid.append(
                (
                    node.node_id,
                    *(node_states.get((node.node_id, name), "-") for name in shown),
                    seen,
                    node.control_url or "-",
                )
            )
        lines += ["", *_table(grid)]
        if len(endpoints) > _MAX_GRID_ENDPOINTS:
            lines.append(f"(per-node states of the first {_MAX_GRID_ENDPOINTS} endpoints)")
    if snapshot.unreadable:
        lines.append(f"{snapshot.unreadable} node record(s) in Redis did not parse (ignored)")
    return "\n".join(lines)


async def fleet_state(client: ControlClient, args: argparse.Namespace) -> int:
    """``state URL --fleet``: the fleet table, or with ``--json`` the raw ``get_state``
    answer (the ``fleet`` object is the snapshot)."""
    ack = await client.send_command(proto.GetState(id=client.next_id(), scope=proto.FLEET))
    if ack.fleet is None:
        _error("the server's answer carried no fleet")
        return EXIT_CONNECTION
    if args.json:
        print(json.dumps(proto.to_dict(ack), indent=2), flush=True)
    else:
        print(format_fleet(ack.fleet), flush=True)
    return EXIT_OK


# --- force-open / reset / disable --fleet ------------------------------------------------------


async def fleet_command(client: ControlClient, args: argparse.Namespace) -> int:
    """Send the command with fleet scope; print each node's ack; 6 when some are missing."""
    reason = args.reason
    if args.command == "force-open":
        ack = await client.force_open(args.endpoint, args.duration, reason, scope=proto.FLEET)
    elif args.command == "disable":
        ack = await client.disable(args.endpoint, args.duration, reason, scope=proto.FLEET)
    else:
        ack = await client.reset(args.endpoint, reason, scope=proto.FLEET)
    acked, missing = ack.nodes_acked or [], ack.nodes_missing or []
    absent = set(ack.absent_on or [])
    lasting = ""
    if args.command != "reset":
        lasting = f" for {args.duration:g}s" if args.duration else " until reset"
    why = f" (reason: {reason})" if reason else ""
    total = len(acked) + len(missing)
    print(
        _safe(
            f"{ack.endpoint}: fleet {ack.command}{lasting}{why}: "
            f"{len(acked)} of {total} node{'s' if total != 1 else ''} acked"
        ),
        flush=True,
    )
    applied = ack.acks or {}
    for node in acked:
        when = f" at {_clock(applied[node])[11:]}" if node in applied else ""
        note = "  (no such endpoint there: noted, applied if it is added)" if node in absent else ""
        print(_safe(f"  {node}  acked{when}{note}"), flush=True)
    for node in missing:
        print(_safe(f"  {node}  MISSING: no ack in time"), flush=True)
    if missing:
        _error(
            f"{len(missing)} node{'s' if len(missing) != 1 else ''} did not ack: "
            f"{', '.join(missing)}; the override stays stored and applies when "
            f"{'they come' if len(missing) != 1 else 'it comes'} back"
        )
        return EXIT_NODES_MISSING
    return EXIT_OK


def fleet_stats_line(frame: proto.StatsFrame) -> str | None:
    """One line for a fleet-scope ``stats`` frame (``None`` for a node-scope one)."""
    fleet = frame.fleet
    if fleet is None:
        return None
    items = ", ".join(f"{ep.name} {ep.summary}" for ep in fleet.endpoints) or "no endpoints"
    link = "" if fleet.link_up else f" ({fleet.link_status})"
    return _safe(
        f"{_clock(frame.wall)}  fleet {fleet.fleet}  {len(fleet.nodes)} nodes  {items}{link}"
    )


# --- fleet-serve --------------------------------------------------------------------------------

_SERVE_EPILOG: Final = f"""\
The operator token comes from --token-file or the {TOKEN_ENV} environment variable; without
one the server only makes sense with --allow-viewers (read-only).

exit status:
  2    usage error
  3    Redis cannot be reached at start
  130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM, after a clean stop
"""


def add_fleet_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fleet-serve`` on the ``rakka-trio`` parser."""
    serve = sub.add_parser(
        "fleet-serve",
        help="serve one fleet's control plane: every node's view and fleet-wide commands",
        description="Run a control server that holds no endpoints and serves the fleet scope "
        "(the Turbine role): consoles connect here to watch every node and to force open, "
        "reset or disable an endpoint on all of them, without picking a node.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--redis", required=True, metavar="URL", help="the fleet's Redis")
    serve.add_argument("--fleet", required=True, metavar="NAME", help="the fleet's name")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8766, help="port (default 8766; 0: any)")
    serve.add_argument("--token-file", metavar="PATH", help="read the operator token here")
    serve.add_argument(
        "--allow-viewers",
        action="store_true",
        help="admit clients without the token, read-only",
    )


def _serve_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as fh:
            value = fh.read().strip()
        if not value:
            raise ValueError("--token-file is empty")
        return value
    return os.environ.get(TOKEN_ENV) or None


def run_fleet_serve(args: argparse.Namespace) -> int:
    """Entry point of ``rakka-trio fleet-serve``; the exit status."""
    from .._extras import MissingExtra, require

    try:
        require("coredis", "redis", "the fleet")
    except MissingExtra as exc:
        print(f"rakka-trio: {exc}", file=sys.stderr)
        return 1
    from .._config import FleetConfig
    from .._errors import ConfigError

    try:
        token = _serve_token(args)
        FleetConfig(name=args.fleet)
    except OSError as exc:
        _error(f"cannot read --token-file: {exc.strerror}")
        return EXIT_USAGE
    except (ValueError, ConfigError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    if token is None and not args.allow_viewers:
        _error(f"no operator token: pass --token-file or set {TOKEN_ENV} (or --allow-viewers)")
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        _error("--port must be 0-65535")
        return EXIT_USAGE
    if not args.redis.startswith(("redis://", "rediss://")):
        _error("--redis must be redis://HOST[:PORT][/DB] or rediss://...")
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="rakka-trio: %(levelname)s %(message)s")
    try:
        return trio.run(_serve, args, token)
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace, token: str | None) -> int:
    from .._fleet import open_fleet
    from .._signals import shutdown_on_signals
    from ._fleet_server import serve_fleet_control

    # A generous Redis timeout: this process serves no requests, and the view of a big fleet
    # is one large MGET (a timeout marks the link down until it reconnects).
    async with open_fleet(args.redis, args.fleet, redis_timeout=1.0) as fleet:
        if not fleet.statistics().link_up:
            _error(f"cannot reach Redis for fleet {args.fleet!r} (is it running?)")
            return EXIT_CONNECTION
        # Signals from here on (only the main thread may watch them; the check above may
        # run anywhere): a signal stops serving, then the fleet link closes.
        async with shutdown_on_signals() as shutdown, trio.open_nursery() as nursery:
            serve = functools.partial(
                serve_fleet_control,
                fleet,
                args.host,
                args.port,
                token=token,
                allow_viewers=args.allow_viewers,
            )
            srv = await nursery.start(serve)
            print(
                f"rakka-trio fleet-serve: fleet {args.fleet} on {srv.url} "
                f"(viewers {'allowed' if args.allow_viewers else 'refused'})",
                flush=True,
            )
    return shutdown.exit_code or EXIT_OK
