"""GCRA buckets: the pure arithmetic of continuous-refill limits, and a key's spec."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

from .._config import RateLimits
from ._cost import BURST_FIELDS, EPS, LIMIT_FIELDS, REQUESTS, Vector


def default_burst(d: int, per_minute: int) -> int:
    """The burst of a limit configured without one: ten seconds' worth for requests (at
    least 1: providers enforce request limits at sub-minute granularity, so any 60 s window
    admits at most ``L + burst``), one minute's worth for tokens (one large request fits)."""
    if d == REQUESTS:
        return max(1, math.ceil(per_minute / 6))
    return per_minute


# --- key specification --------------------------------------------------------------------------


@attrs.frozen
class KeySpec:
    """The limits a key enforces (merged over every endpoint that shares it).

    ``dims`` are the limited dimensions in order; ``limits``/``bursts`` are indexed by
    dimension (0 when unlimited).
    """

    dims: tuple[int, ...]
    limits: tuple[int, int, int, int]
    bursts: tuple[int, int, int, int]
    max_concurrent: int | None
    limits_config: RateLimits

    @classmethod
    def from_limits(cls, limits: RateLimits) -> KeySpec:
        """Read the per-dimension limits and bursts of a :class:`RateLimits`."""
        per_minute = [getattr(limits, f) or 0 for f in LIMIT_FIELDS]
        bursts = [
            (getattr(limits, b) or default_burst(i, per_minute[i])) if per_minute[i] else 0
            for i, b in enumerate(BURST_FIELDS)
        ]
        dims = tuple(i for i in range(4) if per_minute[i])
        lim4 = (per_minute[0], per_minute[1], per_minute[2], per_minute[3])
        bur4 = (bursts[0], bursts[1], bursts[2], bursts[3])
        return cls(dims, lim4, bur4, limits.max_concurrent, limits)

    def lowered_burst(self, d: int, per_minute: float) -> float:
        """The burst of dimension ``d`` once its limit is lowered to ``per_minute`` (provider
        headers): the configured burst scaled by the same ratio, at least 1."""
        limit = self.limits[d]
        if not limit or per_minute >= limit:
            return float(self.bursts[d])
        return float(max(1, math.ceil(self.bursts[d] * per_minute / limit - EPS)))

    def merge(self, other: KeySpec) -> KeySpec:
        """The stricter of two specs for one key: every limit of either, each at its minimum."""

        def lower(a: int, b: int) -> int:
            return min(a, b) if a and b else (a or b)

        limits = tuple(lower(a, b) for a, b in zip(self.limits, other.limits, strict=True))
        bursts = tuple(lower(a, b) for a, b in zip(self.bursts, other.bursts, strict=True))
        conc = [c for c in (self.max_concurrent, other.max_concurrent) if c is not None]
        return KeySpec(
            tuple(i for i in range(4) if limits[i]),
            (limits[0], limits[1], limits[2], limits[3]),
            (bursts[0], bursts[1], bursts[2], bursts[3]),
            min(conc) if conc else None,
            self.limits_config,
        )


# --- GCRA buckets -------------------------------------------------------------------------------


class Gcra:
    """Continuous-refill buckets for a set of dimensions, admitted all-or-nothing.

    Per dimension ``i``: ``T[i] = 60 / L`` seconds per unit, ``tau[i] = burst * T[i]``, and
    ``tat[i]`` the theoretical arrival time. ``take`` is specialised for one and two dimensions
    (the common RPM and RPM+TPM cases) because it is the local hot path.
    """

    __slots__ = ("T", "bursts", "dims", "limits", "take", "tat", "tau")

    def __init__(
        self, dims: tuple[int, ...], limits: list[float], bursts: list[float], now: float
    ) -> None:
        self.dims = dims
        self.limits = limits
        self.bursts = bursts
        self.T = [60.0 / limits[d] for d in dims]
        self.tau = [bursts[d] * t for d, t in zip(dims, self.T, strict=True)]
        self.tat = [now] * len(dims)  # full at creation
        self.take: Callable[[Vector, float], float]
        if not dims:
            self.take = self._take0
        elif len(dims) == 1:
            self.take = self._take1
        elif len(dims) == 2:
            self.take = self._take2
        else:
            self.take = self._taken

    # ``take(v, now)`` returns 0.0 and spends ``v`` when every dimension has room; otherwise
    # it returns the seconds until they all would, and changes nothing.

    @staticmethod
    def _take0(v: Vector, now: float) -> float:
        return 0.0

    def _take1(self, v: Vector, now: float) -> float:
        t = self.tat[0]
        if t < now:
            t = now
        t += v[self.dims[0]] * self.T[0]
        wait = t - now - self.tau[0]
        if wait > EPS:
            return wait
        self.tat[0] = t
        return 0.0

    def _take2(self, v: Vector, now: float) -> float:
        tat = self.tat
        dims = self.dims
        T = self.T
        t0 = tat[0]
        if t0 < now:
            t0 = now
        t0 += v[dims[0]] * T[0]
        t1 = tat[1]
        if t1 < now:
            t1 = now
        t1 += v[dims[1]] * T[1]
        wait = t0 - now - self.tau[0]
        w1 = t1 - now - self.tau[1]
        if w1 > wait:
            wait = w1
        if wait > EPS:
            return wait
        tat[0] = t0
        tat[1] = t1
        return 0.0

    def _taken(self, v: Vector, now: float) -> float:
        new = []
        wait = 0.0
        for i, d in enumerate(self.dims):
            t = max(self.tat[i], now) + v[d] * self.T[i]
            wait = max(wait, t - now - self.tau[i])
            new.append(t)
        if wait > EPS:
            return wait
        self.tat[:] = new  # in place: LocalKey holds a reference to this list
        return 0.0

    def wait(self, v: Vector, now: float, ahead: list[float] | None = None) -> float:
        """Seconds until ``v`` fits (after ``ahead``, the summed costs queued before it)."""
        wait = 0.0
        for i, d in enumerate(self.dims):
            extra = ahead[d] if ahead is not None else 0.0
            t = max(self.tat[i], now) + (v[d] + extra) * self.T[i]
            wait = max(wait, t - now - self.tau[i])
        return wait if wait > EPS else 0.0

    def adjust(self, delta: Vector | list[float], now: float) -> None:
        """Spend ``delta`` more (positive: a debt later admissions repay) or give it back
        (negative: a refund, never above the burst)."""
        for i, d in enumerate(self.dims):
            if delta[d]:
                self.tat[i] = max(self.tat[i], now) + delta[d] * self.T[i]

    def level(self, i: int, now: float) -> float:
        """Units available now in the ``i``-th limited dimension (negative during a debt)."""
        return (now + self.tau[i] - max(self.tat[i], now)) / self.T[i]

    def clamp(self, i: int, remaining: float, now: float) -> bool:
        """Lower the ``i``-th bucket to at most ``remaining``; True when it changed."""
        floor = now + self.tau[i] - remaining * self.T[i]
        if self.tat[i] < floor - EPS:
            self.tat[i] = floor
            return True
        return False

    def set_rate(self, i: int, per_minute: float, burst: float, now: float) -> None:
        """Change the ``i``-th limit, keeping what is available (capped at the new burst)."""
        level = min(self.level(i, now), burst)
        d = self.dims[i]
        self.limits[d] = per_minute
        self.bursts[d] = burst
        self.T[i] = 60.0 / per_minute
        self.tau[i] = burst * self.T[i]
        self.tat[i] = now + self.tau[i] - level * self.T[i]

    def fits(self, v: Vector) -> int | None:
        """The first dimension whose burst ``v`` exceeds (such a cost can never be admitted)."""
        for d in self.dims:
            if v[d] > self.bursts[d]:
                return d
        return None
