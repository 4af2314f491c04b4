"""Providers' rate-limit response headers as the limiter's per-dimension hints.

Each provider reads its own headers (see ``_providers/``); this maps what it found onto the
limiter's dimension numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._providers import RateLimitHint, get_provider, provider_names
from ._cost import DIM_NAMES

__all__ = ["RateLimitHint", "parse_rate_limit_headers"]


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, provider: str | None = None, wall: float | None = None
) -> dict[int, RateLimitHint]:
    """Per-dimension hints (keyed by the limiter's dimension numbers) from the rate-limit
    headers of the provider registered as ``provider``; with ``provider=None``, from every
    registered provider's headers (the first to describe a dimension wins); an unknown
    provider has none. ``wall`` is the Unix time resets are measured from (default: now)."""
    known = provider_names()
    names = known if provider is None else (provider,) if provider in known else ()
    hints: dict[int, RateLimitHint] = {}
    for name in names:
        for dimension, hint in get_provider(name).rate_limit_hints(headers, wall=wall).items():
            if dimension in DIM_NAMES:
                hints.setdefault(DIM_NAMES.index(dimension), hint)
    return hints
