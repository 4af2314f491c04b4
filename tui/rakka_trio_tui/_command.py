"""``rakka-trio tui URL``: the subcommand's arguments and its entry point.

This module imports neither Textual nor Trio at import time, so registering the subcommand
costs the other ``rakka-trio`` commands nothing; :func:`run_tui_command` imports the App.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["TOKEN_ENV", "add_tui_subcommand", "run_tui", "run_tui_command"]

TOKEN_ENV: Final = "RAKKA_TOKEN"

EXIT_USAGE: Final = 2


def add_tui_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tui`` on the ``rakka-trio`` parser."""
    tui = sub.add_parser(
        "tui",
        help="live terminal console: breakers, events, force-open and reset",
        description="Watch a control server live (endpoint table, event log) and act on "
        "breakers: f force-open, r reset, d disable, / filter, s node/fleet scope, ? help, "
        "q (or Ctrl-C) quit. "
        "Durations are typed like the CLI's --duration (300, 90s, 5m, 2h, 1d). Reconnects "
        "automatically when the connection drops.",
        epilog=f"The token comes from --token, --token-file or ${TOKEN_ENV} (prefer the "
        "variable or a file: other users can read command-line arguments in `ps`). Without a "
        "valid token the console is read-only, if the server admits viewers.",
    )
    tui.add_argument("url", metavar="URL", help="control server, e.g. ws://127.0.0.1:8765")
    tui.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV})")
    tui.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    tui.add_argument(
        "--client", default="tui", help="name recorded in the audit trail (default: tui)"
    )
    tui.add_argument(
        "--cafile", metavar="PATH", help="CA bundle to verify a wss:// server's certificate"
    )
    tui.add_argument(
        "--fleet",
        action="store_true",
        help="show every node of the server's fleet (Enter on an endpoint lists its nodes); "
        "f, r and d then act on every node",
    )


def _error(message: str) -> None:
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in message)
    print(f"rakka-trio: error: {safe}", file=sys.stderr, flush=True)


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as fh:
            value = fh.read().strip()
        if not value:
            raise ValueError("--token-file is empty")
        return value
    return os.environ.get(TOKEN_ENV) or None


def run_tui(
    url: str,
    *,
    token: str | None = None,
    client_name: str = "tui",
    ssl_context: ssl.SSLContext | None = None,
    exit_when: Callable[[], str | None] | None = None,
    scope: str | None = None,
) -> int:
    """Run the console against ``url`` until the operator quits (or ``exit_when``, polled
    twice a second, returns a message to close with); the exit status."""
    from rakka_trio._control._input import check_control_url

    problem = check_control_url(url)
    if problem is not None:
        _error(problem)
        return EXIT_USAGE
    from ._app import RakkaTui

    app = RakkaTui(
        url,
        token=token,
        client_name=client_name,
        ssl_context=ssl_context,
        exit_when=exit_when,
        scope=scope,
    )
    app.run()
    return app.return_code or 0


def run_tui_command(args: argparse.Namespace) -> int:
    """Entry point of ``rakka-trio tui`` (arguments from :func:`add_tui_subcommand`)."""
    try:
        token = _read_token(args)
        ssl_context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    except OSError as exc:
        _error(f"cannot read a file: {exc.strerror}")
        return EXIT_USAGE
    except (ValueError, ssl.SSLError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    client = str(args.client)
    if not client.isprintable() or not 0 < len(client) <= 128:
        _error("--client: 1 to 128 printable characters")
        return EXIT_USAGE
    try:
        scope = "fleet" if args.fleet else None
        return run_tui(
            args.url, token=token, client_name=client, ssl_context=ssl_context, scope=scope
        )
    except KeyboardInterrupt:
        return 130
