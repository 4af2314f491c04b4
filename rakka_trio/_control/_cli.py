"""Command-line clients of the control plane: ``state``, ``events``, ``force-open``, ``reset``
and ``disable``, built on :func:`~rakka_trio.open_control_client`.

Human-readable output is the default; ``--json`` prints protocol frames as JSON instead.
Failures print one ``rakka-trio: error: ...`` line on stderr and exit with a status that
says what went wrong (see ``EXIT_*`` and the ``--help`` epilog).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from . import _protocol as proto
from ._client import (
    ControlAuthError,
    ControlClient,
    ControlConnectionError,
    ControlError,
    ControlUnknownEndpoint,
    open_control_client,
)
from ._incident_text import SPARK_BARS, bars_for, deployment_lines, limiter_cell, recent_lines
from ._input import DURATION_HELP, check_control_url, parse_duration

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONNECTION",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNKNOWN_ENDPOINT",
    "EXIT_USAGE",
    "add_subcommands",
    "dispatch",
    "format_frame",
    "format_snapshot",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONNECTION: Final = 3
EXIT_AUTH: Final = 4
EXIT_UNKNOWN_ENDPOINT: Final = 5
EXIT_INTERRUPTED: Final = 130

TOKEN_ENV: Final = "RAKKA_TOKEN"

_EPILOG: Final = f"""\
The token comes from --token, --token-file or the {TOKEN_ENV} environment variable (prefer
the variable or a file: other users can read command-line arguments in `ps`).

exit status:
  0    success
  1    the server refused the command for another reason (invalid, rate limited, ...),
       or you did not confirm a command that lasts until reset
  2    usage error (including a URL that is not ws:// or wss://)
  3    could not connect (refused, unreachable, TLS), or the connection was lost
  4    authentication failed: no token, a wrong token, or a read-only (viewer) connection
  5    unknown endpoint
  6    --fleet: some live nodes did not ack in time (listed; they apply it when back)
  130  interrupted
"""

_CONTROL_COMMANDS: Final = ("state", "events", "force-open", "reset", "disable")


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value is None:
        raise argparse.ArgumentTypeError("empty (for 'until reset' pass --until-reset instead)")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _default_client() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name in a container
        user = "unknown"
    name = f"cli:{user}"
    return name if name.isprintable() and len(name) <= proto.MAX_CLIENT_LENGTH else "cli"


def add_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the control-plane subcommands on the ``rakka-trio`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", metavar="URL", help="control server, e.g. ws://127.0.0.1:8765")
    common.add_argument(
        "--token", help=f"operator token (default: ${TOKEN_ENV}; visible in `ps`, prefer that)"
    )
    common.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    common.add_argument(
        "--client",
        default=_default_client(),
        help="name recorded in the audit trail (default: cli:$USER)",
    )
    common.add_argument(
        "--timeout",
        type=_timeout,
        default=10.0,
        help="seconds to wait to connect and for each answer (default 10)",
    )
    common.add_argument(
        "--cafile", metavar="PATH", help="CA bundle to verify a wss:// server's certificate"
    )
    common.add_argument(
        "--fleet",
        action="store_true",
        help="every node of the server's fleet: show them all, or act on them all and print "
        "each node's ack (exit 6 when some did not ack)",
    )
    fmt = argparse.RawDescriptionHelpFormatter

    state = sub.add_parser(
        "state",
        parents=[common],
        help="print every endpoint's breaker state",
        description="Print a snapshot of every endpoint: breaker state, failures, failure "
        "rate, trips and how long a forced or open state lasts.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    state.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    events = sub.add_parser(
        "events",
        parents=[common],
        help="follow breaker transitions and operator commands live",
        description="Print transitions, operator commands and other events as they happen "
        "(Ctrl-C to stop).",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    events.add_argument("--json", action="store_true", help="print raw frames, one per line")
    events.add_argument("--stats", action="store_true", help="also print the periodic stats frames")
    events.add_argument(
        "--count", type=_count, metavar="N", help="stop after N frames (default: follow)"
    )

    for name, verb in (
        ("force-open", "hold an endpoint's breaker open (fail fast)"),
        ("disable", "bypass an endpoint's breaker (always pass, still counting)"),
    ):
        cmd = sub.add_parser(
            name,
            parents=[common],
            help=verb,
            description=verb[0].upper() + verb[1:] + ", for --duration or until reset. "
            "Until reset is easy to forget, so it must be asked for: --until-reset, or a "
            "yes at the prompt when run in a terminal.",
            epilog=_EPILOG,
            formatter_class=fmt,
        )
        cmd.add_argument("endpoint", metavar="ENDPOINT")
        lasting = cmd.add_mutually_exclusive_group()
        lasting.add_argument(
            "--duration", type=_duration, help=f"how long: {DURATION_HELP} (seconds if no unit)"
        )
        lasting.add_argument(
            "--until-reset",
            action="store_true",
            help="no end: it lasts until `rakka-trio reset` (asked for when neither is given)",
        )
        cmd.add_argument("--reason", help="why (recorded in the audit trail)")

    reset = sub.add_parser(
        "reset",
        parents=[common],
        help="close an endpoint's breaker and clear a forced or disabled state",
        description="Force-close an endpoint's breaker: clears forced-open and disabled "
        "states, counts and the open-duration growth.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    reset.add_argument("endpoint", metavar="ENDPOINT")
    reset.add_argument("--reason", help="why (recorded in the audit trail)")

    from ._fleet_cli import add_fleet_serve  # imports this module: loaded when used

    add_fleet_serve(sub)


def dispatch(args: argparse.Namespace) -> int:
    """Run a control-plane subcommand; returns the exit status."""
    if args.command == "fleet-serve":
        from ._fleet_cli import run_fleet_serve

        return run_fleet_serve(args)
    if args.command not in _CONTROL_COMMANDS:
        _error(f"unknown command {args.command!r}")
        return EXIT_USAGE
    problem = check_control_url(args.url)
    if problem is not None:
        _error(problem)
        return EXIT_USAGE
    try:
        token = _read_token(args)
        ssl_context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    except (OSError, ssl.SSLError, _UsageError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.command in ("force-open", "disable") and not _lasting_confirmed(args):
        if not _interactive():
            _error(
                f"{args.command} without --duration lasts until `rakka-trio reset`; pass "
                "--duration (e.g. 5m) or --until-reset to say so"
            )
            return EXIT_USAGE
        _error(f"not confirmed: nothing sent to {args.endpoint!r}")
        return EXIT_ERROR
    try:
        return trio.run(_run, args, token, ssl_context)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `rakka-trio events URL | head`: the reader left; that is not an error. Point stdout
        # at devnull so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


class _UsageError(Exception):
    pass


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _lasting_confirmed(args: argparse.Namespace) -> bool:
    """True when the command has an end, or the operator asked for none (``--until-reset``,
    or a yes at the prompt in a terminal)."""
    if args.duration is not None or args.until_reset:
        return True
    if not _interactive():
        return False
    print(
        f"{args.command} {_safe(args.endpoint)} without --duration lasts until "
        "`rakka-trio reset`. Continue? [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise _UsageError(f"cannot read --token-file: {exc.strerror}") from None
        if not value:
            raise _UsageError("--token-file is empty")
        return value
    return os.environ.get(TOKEN_ENV) or None


def _error(message: str) -> None:
    print(f"rakka-trio: error: {_safe(message)}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"rakka-trio: warning: {_safe(message)}", file=sys.stderr, flush=True)


async def _run(
    args: argparse.Namespace, token: str | None, ssl_context: ssl.SSLContext | None
) -> int:
    handlers: dict[str, Callable[[ControlClient, argparse.Namespace], Awaitable[int]]] = {
        "state": _state,
        "events": _events,
        "force-open": _command,
        "reset": _command,
        "disable": _command,
    }
    operator_only = args.command in ("force-open", "reset", "disable")
    try:
        async with open_control_client(
            args.url,
            token=token,
            client_name=args.client,
            ssl_context=ssl_context,
            connect_timeout=args.timeout,
            command_timeout=args.timeout,
            require_operator=operator_only,
            scope=proto.FLEET if args.fleet and args.command == "events" else None,
        ) as client:
            if token is not None and client.role != "operator":
                _warn("the token was not accepted; connected read-only (viewer)")
            return await handlers[args.command](client, args)
    except ControlAuthError as exc:
        if token is None:
            _error(
                f"authentication failed: no token given (use --token, --token-file or {TOKEN_ENV})"
            )
        else:
            _error(f"authentication failed: {exc}")
        return EXIT_AUTH
    except ControlUnknownEndpoint as exc:
        _error(str(exc))
        return EXIT_UNKNOWN_ENDPOINT
    except ControlConnectionError as exc:
        _error(str(exc))
        return EXIT_ERROR if exc.code == proto.ErrorCode.NO_FLEET else EXIT_CONNECTION
    except ControlError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except ValueError as exc:  # e.g. a --client or --reason the protocol refuses
        _error(str(exc))
        return EXIT_USAGE


# --- subcommands ----------------------------------------------------------------------------


async def _state(client: ControlClient, args: argparse.Namespace) -> int:
    if args.fleet:
        from ._fleet_cli import fleet_state

        return await fleet_state(client, args)
    snapshot = await client.get_state()
    if args.json:
        print(json.dumps(_snapshot_dict(snapshot), indent=2), flush=True)
    else:
        print(format_snapshot(snapshot, bars=bars_for(sys.stdout.encoding)), flush=True)
    return EXIT_OK


async def _events(client: ControlClient, args: argparse.Namespace) -> int:
    welcome = client.welcome
    fleet = welcome.fleet
    where = f"node {_safe(welcome.snapshot.node_id)}, {len(welcome.snapshot.endpoints)} endpoints"
    if fleet is not None:
        where = f"fleet {_safe(fleet.fleet)}: {len(fleet.nodes)} nodes"
    print(
        f"connected to {_safe(args.url)} as {welcome.role} ({where})", file=sys.stderr, flush=True
    )
    printed = 0
    async for frame in client:
        if isinstance(frame, proto.StatsFrame) and not args.stats:
            continue
        if args.json:
            print(proto.encode(frame), flush=True)
        else:
            print(format_frame(frame), flush=True)
        printed += 1
        if args.count is not None and printed >= args.count:
            return EXIT_OK
    closed = client.closed
    _error(f"event stream ended: {closed.describe() if closed else 'connection closed'}")
    return EXIT_CONNECTION


async def _command(client: ControlClient, args: argparse.Namespace) -> int:
    if args.fleet:
        from ._fleet_cli import fleet_command

        return await fleet_command(client, args)
    reason = args.reason
    if args.command == "force-open":
        ack = await client.force_open(args.endpoint, args.duration, reason)
    elif args.command == "disable":
        ack = await client.disable(args.endpoint, args.duration, reason)
    else:
        ack = await client.reset(args.endpoint, reason)
    lasting = ""
    if args.command != "reset":
        lasting = f" for {args.duration:g}s" if args.duration else " until reset"
    why = f" (reason: {reason})" if reason else ""
    print(_safe(f"{ack.endpoint}: {ack.state}{lasting}{why}"), flush=True)
    return EXIT_OK


# --- formatting -----------------------------------------------------------------------------


def _safe(text: str) -> str:
    """Text from the network, made harmless for a terminal (no escape sequences)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _clock(wall: float | None) -> str:
    stamp = time.time() if wall is None else wall
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
        + f".{int(stamp * 1000) % 1000:03d}"
    )


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def _until(until_in: float | None, until_reset: bool) -> str:
    if until_reset:
        return "until reset"
    if until_in is None:
        return ""
    return f"{_seconds(until_in)} left"


def format_frame(frame: proto.ServerFrame | proto.UnknownFrame) -> str:
    """One human-readable line for a server frame."""
    if isinstance(frame, proto.TransitionFrame):
        parts = [
            _clock(frame.wall),
            f"{frame.node}: {frame.endpoint}" if frame.node else frame.endpoint,
            f"{frame.from_state} -> {frame.to_state}",
            f"({frame.cause})",
        ]
        if frame.consecutive_failures:
            parts.append(f"consecutive_failures={frame.consecutive_failures}")
        if frame.failure_rate is not None:
            parts.append(f"failure_rate={frame.failure_rate:.0%}")
        until = _until(frame.open_until_in, frame.until_reset)
        if until:
            parts.append(until)
        if frame.actor:
            parts.append(f"by {frame.actor}")
        if frame.reason:
            parts.append(f"reason: {frame.reason}")
        return _safe("  ".join(parts))
    if isinstance(frame, proto.CommandFrame):
        where = f"{frame.node}: {frame.endpoint}" if frame.node else frame.endpoint
        scope = "fleet " if frame.scope == proto.FLEET else ""
        text = f"{_clock(frame.wall)}  {where}  {scope}{frame.command} by {frame.actor}"
        if frame.command != "reset":
            text += f" for {_seconds(frame.duration)}" if frame.duration else " until reset"
        if frame.reason:
            text += f"  reason: {frame.reason}"
        return _safe(text)
    if isinstance(frame, proto.StatsFrame):
        if frame.fleet is not None:
            from ._fleet_cli import fleet_stats_line

            return fleet_stats_line(frame) or ""
        items = []
        for ep in frame.endpoints:
            detail = _until(ep.open_until_in, ep.until_reset)
            fails = f" fails={ep.consecutive_failures}" if ep.consecutive_failures else ""
            items.append(f"{ep.name}={ep.state}{fails}" + (f" ({detail})" if detail else ""))
        return _safe(f"{_clock(frame.wall)}  stats  " + ", ".join(items))
    if isinstance(frame, proto.LaggedFrame):
        return f"{_clock(frame.wall)}  (fell behind: {frame.dropped} events dropped)"
    if isinstance(frame, proto.EndpointAddedFrame):
        return _safe(f"{_clock(frame.wall)}  {frame.endpoint}  endpoint added")
    if isinstance(frame, proto.EndpointRemovedFrame):
        return _safe(f"{_clock(frame.wall)}  {frame.endpoint}  endpoint removed")
    if isinstance(frame, proto.TaskRestartedFrame):
        return _safe(
            f"{_clock(frame.wall)}  task {frame.task} crashed ({frame.error}); restart "
            f"#{frame.crashes} in {frame.backoff:g}s"
        )
    if isinstance(frame, proto.ErrorFrame):
        return _safe(f"{_clock(None)}  error {frame.code}: {frame.message}")
    if isinstance(frame, proto.UnknownFrame):
        return _safe(f"{_clock(None)}  {frame.type}  {json.dumps(dict(frame.data))}")
    return _safe(f"{_clock(None)}  {proto.encode(frame)}")


_STATE_COLUMNS: Final = (
    "ENDPOINT",
    "PROVIDER",
    "STATE",
    "FAILS",
    "RATE",
    "IN-FLIGHT",
    "P50/P95/P99",
    "LIMITER",
    "TRIPS",
    "REJECTED",
    "UNTIL",
    "NOTE",
)


def _fails(ep: proto.EndpointState) -> str:
    # Every breaker state starts its counts afresh, so right after a trip the consecutive count
    # is 0: show the total (which includes the failures that tripped it) and the current run.
    text = str(ep.failures)
    if ep.consecutive_failures and ep.consecutive_failures != ep.failures:
        text += f" ({ep.consecutive_failures} in a row)"
    return text


def _rate(ep: proto.EndpointState) -> str:
    if ep.failure_rate is None:
        return "-"
    return f"{ep.failure_rate:.0%} of {ep.calls_in_window}"


def _in_flight(ep: proto.EndpointState) -> str:
    if ep.in_flight is None:
        return "-"
    return f"{ep.in_flight}" + (f" +{ep.queue_depth} queued" if ep.queue_depth else "")


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _latencies(ep: proto.EndpointState) -> str:
    figures = (ep.latency_p50, ep.latency_p95, ep.latency_p99)
    if all(f is None for f in figures):
        return "-"
    return "/".join(_latency(f) for f in figures)


def format_snapshot(snapshot: proto.Snapshot, *, bars: str = SPARK_BARS) -> str:
    """A table of every endpoint in ``snapshot``: breaker state and counts, calls in flight,
    latency percentiles and limiter use (``-`` for a figure the server did not report); then
    the recent rates per endpoint and the deployments, when the server reports them
    (sparklines drawn with ``bars``)."""
    rows: list[tuple[str, ...]] = [_STATE_COLUMNS]
    for ep in snapshot.endpoints:
        note = ""
        if ep.forced_by or ep.forced_reason:
            note = f"{ep.forced_reason or ''}" + (f" (by {ep.forced_by})" if ep.forced_by else "")
        rows.append(
            (
                ep.name,
                ep.provider,
                ep.state,
                _fails(ep),
                _rate(ep),
                _in_flight(ep),
                _latencies(ep),
                limiter_cell(ep),
                str(ep.trips),
                str(ep.rejected),
                _until(ep.open_until_in, ep.until_reset) or "-",
                note.strip() or "-",
            )
        )
    widths = [max(len(_safe(row[i])) for row in rows) for i in range(len(_STATE_COLUMNS))]
    lines = [
        "  ".join(_safe(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]
    title = f"node {_safe(snapshot.node_id)} at {_clock(snapshot.wall)}: "
    title += f"{len(snapshot.endpoints)} endpoint{'s' if len(snapshot.endpoints) != 1 else ''}"
    incident = [*recent_lines(snapshot, _safe, bars), *deployment_lines(snapshot, _safe, bars)]
    return "\n".join([title, *lines, *incident])


def _snapshot_dict(snapshot: proto.Snapshot) -> dict[str, Any]:
    ack = proto.AckFrame(id=0, command="get_state", snapshot=snapshot)
    snap: dict[str, Any] = proto.to_dict(ack)["snapshot"]
    return snap
