"""Reading providers' rate-limit response headers into :class:`RateLimitHint` objects.

Each provider names its headers differently (OpenAI ``x-ratelimit-remaining-tokens``,
Anthropic ``anthropic-ratelimit-tokens-remaining`` ...); a provider lists its names with
:class:`HeaderNames` and :func:`read_hints` does the parsing they share.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs

__all__ = ["DIMENSIONS", "HeaderNames", "RateLimitHint", "parse_int", "parse_reset", "read_hints"]

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")
"""The rate-limit dimensions a hint may describe (the limiter's dimensions)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@attrs.frozen
class RateLimitHint:
    """One dimension's view from the provider: its ``limit``, what is ``remaining``, and the
    seconds until it ``reset``\\s (each ``None`` when the provider did not say)."""

    limit: int | None
    remaining: int | None
    reset: float | None


@attrs.frozen
class HeaderNames:
    """The three header names a provider uses for one dimension (lower case; ``None`` for a
    header it does not send)."""

    dimension: str
    limit: str | None
    remaining: str | None
    reset: str | None


def parse_reset(raw: str, wall: float) -> float | None:
    """Seconds until a reset given as OpenAI's ``1m30.5s``/``6ms``, plain seconds, or an
    RFC 3339 timestamp (Anthropic); ``wall`` is the current Unix time."""
    text = raw.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total, pos = 0.0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNIT[m.group(2)]
        pos = m.end()
    else:
        if pos == len(text) and pos:
            return total
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - wall)


def parse_int(raw: str | None) -> int | None:
    """A non-negative count, or ``None`` for a missing or unreadable one."""
    if raw is None:
        return None
    try:
        value = int(float(raw.strip()))
    except (ValueError, OverflowError):
        return None
    return value if value >= 0 else None


def read_hints(
    headers: Mapping[str, str], names: Sequence[HeaderNames], *, wall: float | None = None
) -> dict[str, RateLimitHint]:
    """The hints ``headers`` give for each dimension in ``names`` (only dimensions with at
    least one readable header). ``wall`` is the current Unix time (default: now)."""
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    now = time.time() if wall is None else wall
    hints: dict[str, RateLimitHint] = {}
    for entry in names:
        limit = parse_int(h.get(entry.limit)) if entry.limit else None
        remaining = parse_int(h.get(entry.remaining)) if entry.remaining else None
        raw_reset = h.get(entry.reset) if entry.reset else None
        reset = None if raw_reset is None else parse_reset(raw_reset, now)
        if limit is not None or remaining is not None or reset is not None:
            hints[entry.dimension] = RateLimitHint(limit, remaining, reset)
    return hints
