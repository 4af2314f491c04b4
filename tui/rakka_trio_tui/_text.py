"""Text helpers of the console: escaping server text, URLs, durations, clocks, figures.

Every string that came from the network goes through :func:`safe_text` before it is shown,
so a hostile or broken server cannot put escape sequences on the operator's terminal.
Durations are parsed by the same function as the command line's ``--duration``.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from typing import Final

from rakka_trio._control._input import parse_duration

__all__ = [
    "MISSING",
    "STATE_STYLES",
    "display_url",
    "format_clock",
    "format_duration",
    "format_latency",
    "format_percent",
    "parse_duration",
    "safe_text",
]

MISSING: Final = "\N{EN DASH}"
"""Shown (a dash) for a figure the server did not report (``null`` on the wire)."""

STATE_STYLES: Final = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "forced_open": "bold magenta",
    "disabled": "dim",
}
"""Rich style per breaker state (the same palette as ``rakka-trio demo``)."""


def safe_text(text: str) -> str:
    """``text`` with every non-printable character (escape sequences, bidi overrides, line
    breaks) replaced by a visible ``\\xNN`` escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def display_url(url: str) -> str:
    """``url`` as it is safe to show: scheme, host, port and path only. User info, query and
    fragment are dropped because that is where people paste tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path if parts.path not in ("", "/") else ""
    return safe_text(urllib.parse.urlunsplit((parts.scheme, netloc, path, "", "")))


def format_duration(seconds: float | None) -> str:
    """A compact duration: ``42s``, ``4m05s``, ``2h03m``, ``3d04h`` (a dash for ``None``)."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    total = max(0, math.ceil(seconds - 1e-9))  # a countdown shows 1s until it reaches 0
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_clock(wall: float) -> str:
    """Local time of day with milliseconds, for the event log."""
    stamp = time.strftime("%H:%M:%S", time.localtime(wall))
    return f"{stamp}.{int(wall * 1000) % 1000:03d}"


def format_percent(value: float | None) -> str:
    """``42%``, ``<1%`` for a small non-zero share, a dash for ``None``."""
    if value is None:
        return MISSING
    if 0 < value < 0.01:
        return "<1%"
    return f"{value:.0%}"


def format_latency(seconds: float | None) -> str:
    """``840ms`` below a second, ``2.31s`` above, a dash for ``None``."""
    if seconds is None:
        return MISSING
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s"
