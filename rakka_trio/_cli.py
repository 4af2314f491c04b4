"""The ``rakka-trio`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._extras import MissingExtra, require

__all__ = ["main"]


def _require_extras(args: argparse.Namespace) -> None:
    """Fail with one line naming the extra when a command needs one that is missing."""
    if args.command == "demo":
        require("rich", "tui", "the demo's live console")
        if args.tui:
            require("textual", "tui", "the operator console")
        if args.redis:
            require("coredis", "redis", "sharing limits through Redis")
    elif args.command == "tui":
        require("textual", "tui", "the operator console")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rakka-trio",
        description="Trio-native resilience for remote LLM providers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the scripted incident demo (no keys; everything on 127.0.0.1)",
        description="Stream completions from a loopback mock provider through a supervisor "
        "while a scripted incident (503 storm, 429s, recovery) trips and recovers a breaker; "
        "serves the control plane on a printed URL and prints a live summary and a report.",
    )
    demo.add_argument(
        "--duration", type=_positive_float, default=10.0, help="seconds to run (default 10)"
    )
    demo.add_argument(
        "--tui",
        action="store_true",
        help="attach the operator console (Textual) to the demo's control server",
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="share the rate limits through Redis (approximate mode: budget leased in the "
        "background, admission at local speed), e.g. redis://127.0.0.1:6379/0",
    )
    demo.add_argument("--seed", type=int, default=1, help="random seed for the load generator")
    demo.add_argument(
        "--concurrency", type=int, default=8, help="concurrent request loops (default 8)"
    )

    from ._control import _cli as _control_cli

    _control_cli.add_subcommands(sub)

    # Registers the arguments only: Textual is imported when `tui` actually runs.
    from rakka_trio_tui._command import add_tui_subcommand

    add_tui_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rakka-trio`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        _require_extras(args)
    except MissingExtra as exc:
        print(f"rakka-trio: {exc}", file=sys.stderr)
        return 1
    if args.command == "demo":
        from ._demo import run_demo

        try:
            return run_demo(
                duration=args.duration,
                seed=args.seed,
                concurrency=args.concurrency,
                redis_url=args.redis,
                tui=args.tui,
            )
        except KeyboardInterrupt:
            return 130
    if args.command == "tui":
        from rakka_trio_tui._command import run_tui_command

        return run_tui_command(args)
    from ._control import _cli as _control_cli

    return _control_cli.dispatch(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
