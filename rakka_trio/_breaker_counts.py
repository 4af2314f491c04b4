"""What a circuit breaker counts: which outcomes count against an endpoint, the sliding window
of recent outcomes its failure-rate and slow-call rules judge by, and the snapshot of its
counts (:class:`BreakerStatistics`)."""

from __future__ import annotations

from collections import deque

import attrs

from ._config import BreakerConfig
from ._errors import RakkaError
from ._events import BreakerState

__all__ = ["FAILURE", "NEUTRAL", "SUCCESS", "BreakerStatistics", "OutcomeWindow", "outcome_of"]

SUCCESS = 0
FAILURE = 1
NEUTRAL = 2  # does not count either way (cancellation, 4xx, 429, content filter, ...)

_TIME_BUCKETS = 10  # a time window is kept as this many buckets (O(1) memory at any rate)


@attrs.frozen(kw_only=True)
class BreakerStatistics:
    """An immutable snapshot of one breaker.

    ``failure_rate`` is over the current sliding window (``None`` before ``minimum_calls``).
    Times are on the Trio clock; ``open_until`` is ``math.inf`` for a forced state without
    expiry and ``None`` when the state has no timer.
    """

    endpoint: str
    state: BreakerState
    consecutive_failures: int
    calls_in_window: int
    failures_in_window: int
    slow_calls_in_window: int
    failure_rate: float | None
    successes: int
    failures: int
    ignored: int
    rejected: int
    trips: int
    opened_at: float | None
    open_until: float | None
    probes_in_flight: int
    probe_permits_expired: int
    forced_reason: str | None
    forced_by: str | None


def outcome_of(exc: BaseException | None, count_unknown: bool) -> int:
    """Does this exception count against the endpoint? Cancellation never does; ``None`` (a
    failure reported without an exception) does."""
    if exc is None:
        return FAILURE
    if not isinstance(exc, Exception):  # trio.Cancelled, KeyboardInterrupt, groups holding them
        return NEUTRAL
    if isinstance(exc, RakkaError):
        return FAILURE if exc.counts_as_circuit_failure else NEUTRAL
    if isinstance(exc, ExceptionGroup):
        outcomes = [outcome_of(e, count_unknown) for e in exc.exceptions]
        return FAILURE if FAILURE in outcomes else NEUTRAL
    return FAILURE if count_unknown else NEUTRAL


class OutcomeWindow:
    """The recent outcomes of one breaker state: the last ``window_size`` calls (``count``),
    or the calls of the last ``window_duration`` seconds kept as ten buckets (``time``).

    Count windows are indexed by the breaker's running total of recorded calls, which the
    breaker increments itself on its hot path (a success adds nothing else here).
    """

    __slots__ = (
        "_buckets",
        "_by_count",
        "_calls",
        "_duration",
        "_fail_idx",
        "_fails",
        "_size",
        "_slow",
        "_slow_idx",
        "_start",
        "_width",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self._by_count = config.window_type == "count"
        self._size = config.window_size
        self._duration = config.window_duration
        self._width = config.window_duration / _TIME_BUCKETS
        self._start = 0  # count windows: the running total when this window began
        self._fail_idx: deque[int] = deque()  # count windows: indices of failures, slow calls
        self._slow_idx: deque[int] = deque()
        self._buckets: deque[list[float]] = deque()  # [bucket_start, calls, failures, slow]
        self._calls = self._fails = self._slow = 0  # time windows: sums over the buckets

    def reset(self, total: int) -> None:
        """Start an empty window after the ``total``-th recorded call (a new breaker state)."""
        self._start = total
        self._fail_idx.clear()
        self._slow_idx.clear()
        self._buckets.clear()
        self._calls = self._fails = self._slow = 0

    def add(self, total: int, now: float, failure: bool, slow: bool) -> None:
        """Record the ``total``-th call (a count window needs only failures and slow calls)."""
        if self._by_count:
            if failure:
                self._fail_idx.append(total)
            if slow:
                self._slow_idx.append(total)
            return
        start = now - (now % self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != start:
            buckets.append([start, 0, 0, 0])
        self._evict(now)
        bucket = buckets[-1]
        bucket[1] += 1
        self._calls += 1
        if failure:
            bucket[2] += 1
            self._fails += 1
        if slow:
            bucket[3] += 1
            self._slow += 1

    def counts(self, total: int, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window, ``total`` calls having been
        recorded so far, at time ``now``."""
        if self._by_count:
            floor = max(total - self._size, self._start)
            fi, si = self._fail_idx, self._slow_idx
            while fi and fi[0] <= floor:
                fi.popleft()
            while si and si[0] <= floor:
                si.popleft()
            return total - floor, len(fi), len(si)
        self._evict(now)
        return self._calls, self._fails, self._slow

    def _evict(self, now: float) -> None:
        horizon = now - self._duration
        buckets = self._buckets
        while buckets and buckets[0][0] + self._width <= horizon:
            _, calls, fails, slow = buckets.popleft()
            self._calls -= int(calls)
            self._fails -= int(fails)
            self._slow -= int(slow)
