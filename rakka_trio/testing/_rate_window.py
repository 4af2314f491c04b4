"""The mock's rate limits: what it reports in rate-limit headers, and optionally enforces."""

from __future__ import annotations

import attrs

from ._plan import RateSnapshot

__all__ = ["MockRateLimits", "RateWindow"]


@attrs.frozen(kw_only=True)
class MockRateLimits:
    """The limits the mock reports in its rate-limit headers, per route, over a fixed window.

    Every authenticated, valid request uses one request and its input plus output tokens (the
    mock's word counts). With ``enforce=True`` a request that would exceed a limit gets a real
    429 (with ``Retry-After`` until the window resets) instead of an answer.
    """

    requests_per_minute: int = 10_000
    tokens_per_minute: int = 2_000_000
    input_tokens_per_minute: int = 2_000_000
    output_tokens_per_minute: int = 400_000
    window: float = 60.0
    enforce: bool = False

    def __attrs_post_init__(self) -> None:
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.window, int | float) and self.window > 0):
            raise ValueError(f"window must be > 0, got {self.window!r}")


class RateWindow:
    """Fixed-window usage of one route, on the Trio clock."""

    def __init__(self, limits: MockRateLimits) -> None:
        self.limits = limits
        self.start: float | None = None
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def _roll(self, now: float) -> None:
        if self.start is None or now >= self.start + self.limits.window:
            self.start = now
            self.requests = self.input_tokens = self.output_tokens = 0

    def reset_in(self, now: float) -> float:
        """Seconds until the current window ends."""
        self._roll(now)
        assert self.start is not None
        return self.start + self.limits.window - now

    def exceeded(self, now: float, input_tokens: int, output_tokens: int) -> bool:
        """Whether one more request of this size would go over a limit."""
        self._roll(now)
        lim = self.limits
        return (
            self.requests + 1 > lim.requests_per_minute
            or self.input_tokens + self.output_tokens + input_tokens + output_tokens
            > lim.tokens_per_minute
            or self.input_tokens + input_tokens > lim.input_tokens_per_minute
            or self.output_tokens + output_tokens > lim.output_tokens_per_minute
        )

    def charge(self, now: float, input_tokens: int, output_tokens: int) -> None:
        """Count one request and its tokens."""
        self._roll(now)
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def snapshot(self, now: float, *, exhausted_for: float | None = None) -> RateSnapshot:
        """Limits and what remains; ``exhausted_for`` reports the requests as used up for
        that many seconds (a 429)."""
        lim = self.limits
        reset = self.reset_in(now)
        tokens_used = self.input_tokens + self.output_tokens
        requests_remaining = max(0, lim.requests_per_minute - self.requests)
        requests_reset = reset
        if exhausted_for is not None:  # a 429: say so in the headers, as providers do
            requests_remaining = 0
            requests_reset = exhausted_for
        return RateSnapshot(
            requests_limit=lim.requests_per_minute,
            requests_remaining=requests_remaining,
            requests_reset=requests_reset,
            tokens_limit=lim.tokens_per_minute,
            tokens_remaining=max(0, lim.tokens_per_minute - tokens_used),
            tokens_reset=reset,
            input_tokens_limit=lim.input_tokens_per_minute,
            input_tokens_remaining=max(0, lim.input_tokens_per_minute - self.input_tokens),
            output_tokens_limit=lim.output_tokens_per_minute,
            output_tokens_remaining=max(0, lim.output_tokens_per_minute - self.output_tokens),
        )
