"""Command-line clients of the control plane (``state``, ``events``, ``force-open``, ``reset``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_subcommands", "dispatch"]


def add_subcommands(sub: Any) -> None:
    """Register the control-plane subcommands on the ``rakka-trio`` parser."""


def dispatch(args: argparse.Namespace) -> int:
    """Run a control-plane subcommand; returns the exit status."""
    raise SystemExit(f"unknown command {args.command!r}")
