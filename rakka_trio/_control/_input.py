"""What operators type, checked the same way by the command line and the console.

Durations (``300``, ``90s``, ``5m``, ``1.5h``, ``1d``, ``1h30m``) and control-server URLs
(``ws://host:port``, ``wss://host:port``). One parser for both, so ``rakka-trio force-open
--duration 5m`` and the console's force-open dialog accept exactly the same text.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Final

from ._schema import MAX_DURATION

__all__ = ["DURATION_HELP", "check_control_url", "parse_duration"]

DURATION_HELP: Final = "300, 90s, 5m, 1.5h, 1d or 1h30m"
"""The forms :func:`parse_duration` accepts, for help texts."""

_UNIT_SECONDS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE: Final = re.compile(rf"{_NUMBER}")
_PART: Final = re.compile(rf"({_NUMBER})\s*([smhd])")
_COMPOUND: Final = re.compile(rf"(?:{_NUMBER}\s*[smhd]\s*)+")


def parse_duration(text: str) -> float | None:
    """Seconds for what an operator typed: a number of seconds (``300``), or numbers with
    units ``s``, ``m``, ``h``, ``d`` (``90s``, ``5m``, ``1.5h``, ``1d``, ``1h30m``); case and
    surrounding spaces do not matter. Blank text means "until reset" and gives ``None``.

    Raises :class:`ValueError` (its message says what is accepted) for anything else, and for
    a duration that is not more than 0 or longer than the protocol allows (366 days).
    """
    cleaned = text.strip().lower()
    if not cleaned:
        return None
    if _BARE.fullmatch(cleaned):
        value = float(cleaned)
    elif _COMPOUND.fullmatch(cleaned):
        value = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(cleaned))
    else:
        raise ValueError(f"not a duration: {cleaned[:40]!r} (use {DURATION_HELP})")
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION:
        raise ValueError("a duration must be more than 0 and at most 366 days")
    return value


def check_control_url(url: str) -> str | None:
    """What is wrong with ``url`` as a control-server address, or ``None`` when it is usable.

    The message never quotes the URL: people paste tokens into URLs.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "URL: not a valid ws://host:port URL"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return "URL: must be ws://host:port or wss://host:port (the control server's address)"
    return None
