"""Reading providers' rate-limit response headers into limit hints."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

import attrs

from ._cost import INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS, TOKENS

# --- rate-limit response headers --------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_reset(raw: str, wall: float) -> float | None:
    """Seconds until a reset given as OpenAI's ``1m30.5s``/``6ms``, plain seconds, or
    Anthropic's RFC 3339 timestamp."""
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


def _parse_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(float(raw.strip()))
    except (ValueError, OverflowError):
        return None
    return value if value >= 0 else None


@attrs.frozen
class _Hint:
    """One dimension's view from the provider: its limit, what remains, seconds to reset."""

    limit: int | None
    remaining: int | None
    reset: float | None


# (dimension, OpenAI suffix or Anthropic infix)
_OPENAI_DIMS = ((REQUESTS, "requests"), (TOKENS, "tokens"))
_ANTHROPIC_DIMS = (
    (REQUESTS, "requests"),
    (TOKENS, "tokens"),
    (INPUT_TOKENS, "input-tokens"),
    (OUTPUT_TOKENS, "output-tokens"),
)


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, wall: float | None = None
) -> dict[int, _Hint]:
    """Per-dimension hints from OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
    and Anthropic ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*``."""
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    now = time.time() if wall is None else wall
    hints: dict[int, _Hint] = {}
    for dim, name in _OPENAI_DIMS:
        limit = _parse_int(h.get(f"x-ratelimit-limit-{name}"))
        remaining = _parse_int(h.get(f"x-ratelimit-remaining-{name}"))
        raw_reset = h.get(f"x-ratelimit-reset-{name}")
        reset = None if raw_reset is None else _parse_reset(raw_reset, now)
        if limit is not None or remaining is not None or reset is not None:
            hints[dim] = _Hint(limit, remaining, reset)
    for dim, name in _ANTHROPIC_DIMS:
        limit = _parse_int(h.get(f"anthropic-ratelimit-{name}-limit"))
        remaining = _parse_int(h.get(f"anthropic-ratelimit-{name}-remaining"))
        raw_reset = h.get(f"anthropic-ratelimit-{name}-reset")
        reset = None if raw_reset is None else _parse_reset(raw_reset, now)
        if limit is not None or remaining is not None or reset is not None:
            hints[dim] = _Hint(limit, remaining, reset)
    return hints
