"""Rolling windows: counts by label and latency samples in fixed time buckets.

An incident view asks "what is happening *now* and since when", which running totals cannot
answer. A :class:`RollingWindow` keeps ``buckets`` buckets of ``bucket_seconds`` each (by
default 30 of 10 s: 5 minutes) in a ring; each bucket holds counts per label (an outcome such
as ``ok``, ``5xx`` or ``429``) and a bounded sample of latencies. Memory is constant; adding is
O(1) and does no allocation once a bucket has seen its labels.

Rates over "the last 10 s" use the sliding-window estimate: the current, partly filled bucket
plus the previous one weighted by the part of it still inside the window, so a rate neither
drops to zero nor jumps when a new bucket starts. The series (one total per bucket, oldest
first) feed sparklines without any extra round trip.

It is a pure data structure: the caller passes the time (``trio.current_time()`` in the
library, any clock in tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

__all__ = ["RollingStatistics", "RollingWindow"]

DEFAULT_BUCKET_SECONDS = 10.0
DEFAULT_BUCKETS = 30  # five minutes of 10 s buckets
_SAMPLES_PER_BUCKET = 256  # latency samples kept per bucket (the first ones; enough for p99)


_EMPTY: Mapping[str, float] = MappingProxyType({})
_EMPTY_SERIES: Mapping[str, tuple[int, ...]] = MappingProxyType({})


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@attrs.frozen(kw_only=True)
class RollingStatistics:
    """A snapshot of a :class:`RollingWindow`.

    ``rates`` are events per second by label over the last ``window`` seconds (sliding-window
    estimate); ``counts`` the estimated events in that window; ``series`` one tuple per label
    with the count of each bucket, oldest first (the last entry is the bucket in progress);
    ``latency_p50/p95/p99`` come from the samples of the current and previous bucket.
    """

    window: float
    bucket_seconds: float
    rates: Mapping[str, float]
    counts: Mapping[str, float]
    series: Mapping[str, tuple[int, ...]]
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None

    def total_rate(self, exclude: Iterable[str] = ()) -> float:
        """Events per second over all labels except ``exclude``."""
        skip = set(exclude)
        return sum(r for label, r in self.rates.items() if label not in skip)

    def total_series(
        self, labels: Iterable[str] | None = None, *, exclude: Iterable[str] = ()
    ) -> tuple[int, ...]:
        """Per bucket (oldest first), the events with one of ``labels`` (default: any label)
        except those in ``exclude``; empty when the window saw nothing."""
        skip = set(exclude)
        wanted = None if labels is None else set(labels)
        rows = [
            row
            for label, row in self.series.items()
            if label not in skip and (wanted is None or label in wanted)
        ]
        if not self.series:
            return ()
        length = len(next(iter(self.series.values())))
        if not rows:
            return (0,) * length
        return tuple(map(sum, zip(*rows, strict=True)))

    def share(self, labels: Iterable[str], *, of_excluding: Iterable[str] = ()) -> float | None:
        """The fraction of the window's events that carry one of ``labels`` (``None`` if idle).

        ``of_excluding`` leaves labels out of the denominator (for example ``cancelled``).
        """
        wanted = set(labels)
        skip = set(of_excluding)
        total = sum(c for label, c in self.counts.items() if label not in skip)
        if total <= 0:
            return None
        return sum(c for label, c in self.counts.items() if label in wanted) / total


class RollingWindow:
    """Counts by label and latency samples over ``buckets`` buckets of ``bucket_seconds``.

    The ring is allocated on the first event, so an endpoint that never sees traffic costs
    nothing, and a window with no event in the last ``span`` seconds answers
    :meth:`statistics` without touching its buckets.
    """

    __slots__ = ("_bucket", "_counts", "_epoch", "_last", "_n", "_samples", "_start")

    def __init__(
        self,
        *,
        bucket_seconds: float = DEFAULT_BUCKET_SECONDS,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        if not bucket_seconds > 0 or buckets < 2:
            raise ValueError("a rolling window needs bucket_seconds > 0 and at least 2 buckets")
        self._bucket = float(bucket_seconds)
        self._n = buckets
        self._counts: list[dict[str, int]] | None = None  # allocated on the first event
        self._samples: list[list[float]] | None = None
        self._epoch = 0  # index (since time 0) of the bucket in progress
        self._last = -buckets  # epoch of the latest event (none yet: long expired)
        self._start: float | None = None  # time of the first event, for partial windows

    @property
    def bucket_seconds(self) -> float:
        """Length of one bucket in seconds."""
        return self._bucket

    @property
    def buckets(self) -> int:
        """Number of buckets kept."""
        return self._n

    @property
    def span(self) -> float:
        """Seconds of history kept."""
        return self._bucket * self._n

    def _advance(self, now: float) -> int:
        epoch = int(now // self._bucket)
        if epoch > self._epoch:
            if self._counts is not None and self._samples is not None:
                # Clear the buckets skipped since the last event (at most the whole ring).
                for e in range(max(self._epoch + 1, epoch - self._n + 1), epoch + 1):
                    i = e % self._n
                    self._counts[i].clear()
                    self._samples[i].clear()
            self._epoch = epoch
        if self._start is None:
            self._start = now
        return self._epoch % self._n

    def _ring(self) -> tuple[list[dict[str, int]], list[list[float]]]:
        if self._counts is None or self._samples is None:
            self._counts = [{} for _ in range(self._n)]
            self._samples = [[] for _ in range(self._n)]
        return self._counts, self._samples

    def add(self, now: float, label: str, n: int = 1) -> None:
        """Count ``n`` events with ``label`` at time ``now``."""
        counts_ring, _ = self._ring()
        counts = counts_ring[self._advance(now)]
        counts[label] = counts.get(label, 0) + n
        self._last = self._epoch

    def add_latency(self, now: float, seconds: float) -> None:
        """Record one latency sample at time ``now``."""
        _, samples_ring = self._ring()
        samples = samples_ring[self._advance(now)]
        if len(samples) < _SAMPLES_PER_BUCKET:
            samples.append(seconds)
        self._last = self._epoch

    def idle(self, now: float) -> bool:
        """True when no event happened in the ``span`` seconds before ``now``."""
        return int(now // self._bucket) - self._last >= self._n

    def statistics(
        self, now: float, *, window: float | None = None, series: bool = True
    ) -> RollingStatistics:
        """A snapshot at ``now``; rates over the last ``window`` seconds (default one bucket).
        ``series=False`` skips the per-bucket series (rates only: cheaper)."""
        bucket = self._bucket
        window = bucket if window is None else max(bucket, min(window, self.span - bucket))
        if self.idle(now) or self._counts is None or self._samples is None:
            # Nothing inside the ring: no need to visit (or clear) its buckets.
            return RollingStatistics(
                window=window,
                bucket_seconds=bucket,
                rates=_EMPTY,
                counts=_EMPTY,
                series=_EMPTY_SERIES,
                latency_p50=None,
                latency_p95=None,
                latency_p99=None,
            )
        self._advance(now)
        ring, samples_ring, n = self._counts, self._samples, self._n
        current = self._epoch
        into = now - current * bucket  # seconds into the bucket in progress
        # Whole buckets fully inside the window, then the oldest one weighted by its overlap.
        whole = int((window - into) // bucket) if window > into else 0
        leftover = max(0.0, window - into - whole * bucket) / bucket
        counts: dict[str, float] = {}
        for k in range(whole + 1):
            for label, c in ring[(current - k) % n].items():
                counts[label] = counts.get(label, 0.0) + c
        if leftover > 0:
            for label, c in ring[(current - whole - 1) % n].items():
                counts[label] = counts.get(label, 0.0) + c * leftover
        # A window longer than the history seen so far would understate the rate (at least one
        # second, so the very first event does not read as a huge rate).
        seen = now - self._start if self._start is not None else 0.0
        effective = max(seen, 1.0) if seen < window else window
        # One pass over the ring, oldest bucket first: each count lands in its label's series.
        rows: dict[str, list[int]] = {}
        for k in range(n if series else 0):
            for label, c in ring[(current - n + 1 + k) % n].items():
                row = rows.get(label)
                if row is None:
                    row = rows[label] = [0] * n
                row[k] = c
        per_label = {label: tuple(rows[label]) for label in sorted(rows)}
        samples = sorted(samples_ring[current % n] + samples_ring[(current - 1) % n])
        return RollingStatistics(
            window=window,
            bucket_seconds=bucket,
            rates=MappingProxyType({k: v / effective for k, v in counts.items()}),
            counts=MappingProxyType(counts),
            series=MappingProxyType(per_label) if series else _EMPTY_SERIES,
            latency_p50=_quantile(samples, 0.50),
            latency_p95=_quantile(samples, 0.95),
            latency_p99=_quantile(samples, 0.99),
        )
