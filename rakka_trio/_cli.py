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


_DEMO_EPILOG = """\
exit status:
  0    the incident played out: the breaker tripped and recovered
  1    it did not (the reason is printed), or the console was closed early
  2    usage error
  3    --redis given but Redis cannot be reached
  130  stopped by Ctrl-C (SIGINT), 143 by SIGTERM: after a clean leave and a partial report
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _loops(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000, got {value}")
    return value


def _redis_url(text: str) -> str:
    from ._demo_shared import check_redis_url

    problem = check_redis_url(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _interrupted(exc: BaseException) -> bool:
    """True for a KeyboardInterrupt, alone or in (nested) exception groups of nothing else:
    Trio delivers a Ctrl-C that lands inside a nursery wrapped in a group."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rakka-trio",
        description="Trio-native resilience for remote LLM providers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        # One line, so a usage error stays short (argparse would wrap the generated one).
        usage="%(prog)s [-h] [--duration SECONDS] [--tui] [--redis URL [--fleet NAME]] "
        "[--seed N] [--concurrency N]",
        help="run the scripted incident demo (no keys; everything on 127.0.0.1)",
        description="Stream completions from a loopback mock provider through a supervisor "
        "while a scripted incident (503 storm, 429s, recovery) trips and recovers a breaker; "
        "serves the control plane on a printed URL and prints a live summary and a report.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        type=_redis_url,
        default=None,
        help="share the rate limits through Redis (approximate mode: budget leased in the "
        "background, admission at local speed), e.g. redis://127.0.0.1:6379/0; the budgets "
        "are small so that two demos on one Redis visibly share them; refused if Redis "
        "cannot be reached",
    )
    demo.add_argument(
        "--fleet",
        metavar="NAME",
        default=None,
        help="join fleet NAME through --redis: run two demos with the same name and force an "
        "endpoint open on both from one console (`force-open URL primary --fleet`)",
    )
    demo.add_argument("--seed", type=int, default=1, help="random seed for the load generator")
    demo.add_argument(
        "--concurrency", type=_loops, default=8, help="concurrent request loops (default 8)"
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
                fleet=args.fleet,
            )
        except BaseException as exc:
            # A Ctrl-C before the demo watches for signals (or after): no traceback.
            if _interrupted(exc):
                return 130
            raise
    if args.command == "tui":
        from rakka_trio_tui._command import run_tui_command

        return run_tui_command(args)
    from ._control import _cli as _control_cli

    return _control_cli.dispatch(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
