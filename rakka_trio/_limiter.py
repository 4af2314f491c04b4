"""Rate limiting: per-key budgets admitted all-or-nothing with continuous refill (DESIGN §4.6).

A *key* is ``(provider, api-key fingerprint, model family)``: the unit a provider meters. Each key
holds a set of limits — requests, tokens, input tokens, output tokens per minute and concurrent
requests — and an admission takes from all of them or from none. Every limit of ``L`` per minute
refills continuously at ``L/60`` per second and holds at most its burst (default: one minute's
worth, like the providers' own buckets), so there are no fixed-window edge bursts.

The local state machine is GCRA: for each limit the key stores a *theoretical arrival time*
``tat``; the bucket holds ``(now + tau - max(tat, now)) / T`` units, where ``T = 60/L`` seconds per
unit and ``tau = burst * T``. Admission, refunds, debts and clamps are a few float operations, so
``try_acquire`` costs well under a microsecond and never awaits.

Waiting is FIFO per key: only the head of the line may take budget, so a large request is never
starved by a stream of small ones, and a waiter that is cancelled has consumed nothing (admission
and return happen in the same step, without a checkpoint in between).

:meth:`LimiterHandle.reserve` is the full admission the calls layer uses: it takes the rate budget
for an *estimate* and a concurrency permit. :meth:`Reservation.settle` corrects the spend to the
provider's reported usage (a refund, or a debt that later admissions repay), and
:meth:`Reservation.release` returns the permit. Permits cannot leak: the reservation is a context
manager, and one dropped without release returns its permit when it is garbage-collected.

Adaptive control: :meth:`LimiterHandle.observe_headers` reads OpenAI ``x-ratelimit-*`` and
Anthropic ``anthropic-ratelimit-*`` headers, lowers the effective limit to the provider's (never
above the configured one) and clamps the bucket to ``remaining``;
:meth:`LimiterHandle.observe_rate_limited` pauses the whole key after a 429 until its Retry-After
or reset time.

The ``approximate`` and ``strict`` modes share a key's budget through Redis; their keys live in
``_limiter_redis.py`` and reuse the waiting, reservation and adaptive machinery defined here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from ._config import EndpointConfig, RateLimits
from ._credentials import EnvCredential, Secret, StaticCredential
from ._errors import (
    ConfigError,
    LimiterUnavailable,
    RateLimitExceeded,
    UnknownEndpoint,
    parse_retry_after,
)
from ._events import Event

if TYPE_CHECKING:
    from ._limiter_redis import RedisBackend

__all__ = [
    "Cost",
    "KeyStatistics",
    "LimitStatistics",
    "LimiterFallback",
    "LimiterHandle",
    "LimiterPaused",
    "LimiterStateLost",
    "LimiterStatistics",
    "Reservation",
    "model_family",
]

log = logging.getLogger("rakka_trio.limiter")

# Dimensions, in the order of Cost._v and of every per-dimension array.
REQUESTS: Final = 0
TOKENS: Final = 1
INPUT_TOKENS: Final = 2
OUTPUT_TOKENS: Final = 3
DIM_NAMES: Final = ("requests", "tokens", "input_tokens", "output_tokens")
_LIMIT_FIELDS: Final = (
    "requests_per_minute",
    "tokens_per_minute",
    "input_tokens_per_minute",
    "output_tokens_per_minute",
)
_BURST_FIELDS: Final = (
    "requests_burst",
    "tokens_burst",
    "input_tokens_burst",
    "output_tokens_burst",
)

# Float slack when comparing a bucket level with a cost: tat arithmetic on large clock values
# leaves rounding residue far below any meaningful wait.
_EPS: Final = 1e-9

Vector = tuple[int, int, int, int]


# --- cost -------------------------------------------------------------------------------------


def _count(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Cost.{attribute.name} must be an integer >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Cost:
    """What one admission spends: ``requests`` (usually 1), ``input_tokens`` and
    ``output_tokens``.

    Tokens-per-minute limits count ``input_tokens + output_tokens`` (:attr:`tokens`); input- and
    output-token limits count their own part. For a :meth:`LimiterHandle.reserve` estimate use
    the prompt's token estimate and the request's ``max_tokens``; settle with the provider's
    reported usage.
    """

    requests: int = attrs.field(default=1, validator=_count)
    input_tokens: int = attrs.field(default=0, validator=_count)
    output_tokens: int = attrs.field(default=0, validator=_count)
    # The per-dimension vector the hot path reads (one attribute load instead of four).
    _v: Vector = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        vector = (
            self.requests,
            self.input_tokens + self.output_tokens,
            self.input_tokens,
            self.output_tokens,
        )
        object.__setattr__(self, "_v", vector)

    @property
    def tokens(self) -> int:
        """Input plus output tokens: what a tokens-per-minute limit counts."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_usage(cls, usage: UsageLike, *, requests: int = 1) -> Cost:
        """The cost of a finished call from its reported usage (e.g. :class:`Usage`)."""
        return cls(
            requests=requests,
            input_tokens=max(0, int(usage.input_tokens)),
            output_tokens=max(0, int(usage.output_tokens)),
        )


class UsageLike(Protocol):
    """Anything reporting ``input_tokens`` and ``output_tokens`` (such as :class:`Usage`)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


_ONE_REQUEST: Final = Cost()


# --- model families ---------------------------------------------------------------------------

# Dated or versioned snapshots share their family's limits: gpt-4o-2024-08-06 -> gpt-4o,
# claude-3-5-sonnet-20241022 -> claude-3-5-sonnet, gemini-1.5-pro-002 -> gemini-1.5-pro.
_FAMILY_SUFFIX = re.compile(
    r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}|latest|v\d+(?::\d+)?))+$", re.IGNORECASE
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/\-]")


def model_family(model: str | None) -> str:
    """The rate-limit family of a model name: its dated/versioned suffixes removed.

    ``None`` or an empty name is ``"default"``. The result is lowercase and safe to embed in a
    Redis key.
    """
    if not model:
        return "default"
    name = model.strip().lower().removeprefix("models/")
    family = _FAMILY_SUFFIX.sub("", name) or name
    return _UNSAFE.sub("_", family)[:100] or "default"


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


# --- events -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LimiterPaused(Event):
    """A key stopped admitting until ``until`` (Trio clock) after a provider 429.

    ``key`` is ``provider:fingerprint:family`` (never the credential); ``endpoint`` is the
    endpoint that observed it (``None`` when the pause came from another node through Redis);
    ``cause`` is ``retry_after``, ``reset`` (from rate-limit headers), ``default`` (a 429
    without hints) or ``shared``.
    """

    key: str
    endpoint: str | None
    until: float
    cause: str


@attrs.frozen(kw_only=True)
class LimiterFallback(Event):
    """Shared limits lost (``active=True``) or regained (``active=False``) their Redis.

    While active each shared key follows its ``redis_failure_policy``; ``error`` says what
    failed (credentials scrubbed).
    """

    active: bool
    error: str | None = None


@attrs.frozen(kw_only=True)
class LimiterStateLost(Event):
    """Redis no longer had a shared key's state (restart or eviction): it was re-created
    conservatively (empty, refilling from now) and this node re-registered."""

    key: str


# --- statistics -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LimitStatistics:
    """One limit of a key: ``limit`` per minute as configured, ``effective_limit`` after
    adaptive lowering, ``burst``, what is ``available`` now (negative while a debt is repaid),
    and ``utilisation`` (``1 - available/burst``, clipped to 0..1)."""

    name: str
    limit: int
    effective_limit: int
    burst: int
    available: float
    utilisation: float


@attrs.frozen(kw_only=True)
class KeyStatistics:
    """A snapshot of one limit key (``provider:fingerprint:family``).

    Counters: ``admitted`` admissions, ``waited`` of them after waiting in line, ``rejected``
    refusals (``try_acquire`` or ``max_wait``), ``cancelled`` waiters, ``pauses`` after 429s,
    ``state_resets`` (lost Redis state detected), ``redis_round_trips``. ``fallback`` is true
    while Redis is unavailable and the failure policy is in effect; ``members`` is the number of
    live nodes sharing the key (distributed modes). ``utilisation`` is the highest of its limits'.
    """

    key: str
    mode: str
    limits: tuple[LimitStatistics, ...]
    max_concurrent: int | None
    in_flight: int
    waiters: int
    paused_until: float | None
    utilisation: float
    admitted: int
    waited: int
    rejected: int
    cancelled: int
    pauses: int
    fallback: bool = False
    members: int | None = None
    state_resets: int = 0
    redis_round_trips: int = 0


@attrs.frozen(kw_only=True)
class LimiterStatistics:
    """A snapshot of one endpoint's limiter (:meth:`LimiterHandle.statistics`).

    ``keys`` are the keys this endpoint has used; the totals are over them. ``utilisation`` is
    the highest of any key's (0 when no key was used yet). ``redis_healthy`` is ``None`` in
    local mode.
    """

    endpoint: str
    mode: str
    keys: tuple[KeyStatistics, ...]
    utilisation: float
    waiters: int
    in_flight: int
    paused: bool
    fallback: bool
    redis_healthy: bool | None


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
        per_minute = [getattr(limits, f) or 0 for f in _LIMIT_FIELDS]
        bursts = [
            (getattr(limits, b) or per_minute[i]) if per_minute[i] else 0
            for i, b in enumerate(_BURST_FIELDS)
        ]
        dims = tuple(i for i in range(4) if per_minute[i])
        lim4 = (per_minute[0], per_minute[1], per_minute[2], per_minute[3])
        bur4 = (bursts[0], bursts[1], bursts[2], bursts[3])
        return cls(dims, lim4, bur4, limits.max_concurrent, limits)

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
        if wait > _EPS:
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
        if wait > _EPS:
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
        if wait > _EPS:
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
        return wait if wait > _EPS else 0.0

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
        if self.tat[i] < floor - _EPS:
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


# --- keys ---------------------------------------------------------------------------------------


def fast_clock() -> tuple[Callable[[], float], float]:
    """The current run's clock as ``(read, offset)`` with Trio time = ``read() + offset``.

    Trio's default ``SystemClock`` is ``offset + time.perf_counter()`` in a Python method;
    reading ``perf_counter`` directly (a C call) takes a fifth of the hot path's time off, and
    keys add the offset only where their times meet Trio's (deadlines, events, statistics).
    Any other clock (``MockClock`` in tests) is used as it is.
    """
    clock = trio.lowlevel.current_clock()
    offset = getattr(clock, "offset", None)
    if (
        type(clock).__name__ == "SystemClock"
        and type(clock).__module__.startswith("trio.")
        and isinstance(offset, float)
        and abs(clock.current_time() - (offset + time.perf_counter())) < 0.01
    ):
        return time.perf_counter, offset
    return clock.current_time, 0.0


class _Waiter:
    __slots__ = ("event", "permit", "v")

    def __init__(self, v: Vector, permit: bool) -> None:
        self.v = v
        self.permit = permit
        self.event = trio.Event()


class Key:
    """The shared state of one limit key: FIFO line, permits, pause, adaptive limits, counters.

    Subclasses decide where budget comes from (:class:`LocalKey`: a local GCRA; the shared
    keys in ``_limiter_redis.py``: Redis). The methods here are synchronous and do no I/O;
    :meth:`_wait_in_line` is the one place a caller sleeps.
    """

    mode = "local"

    def __init__(
        self,
        label: str,
        spec: KeySpec,
        registry: LimiterRegistry,
        clock: Callable[[], float],
        offset: float = 0.0,
    ) -> None:
        self.label = label
        self.spec = spec
        self.registry = registry
        # Key time is ``clock()``; Trio time is key time + ``offset`` (see fast_clock).
        self._clock = clock
        self.offset = offset
        self._waiters: deque[_Waiter] = deque()
        self._paused_until = -math.inf
        self._in_flight = 0
        self._users = 0  # handles sharing this key
        self.closed = False
        self.effective = list(spec.limits)  # per-minute limits after adaptive lowering
        self.admitted = 0
        self.waited = 0
        self.rejected = 0
        self.cancelled = 0
        self.pauses = 0

    # -- hooks -----------------------------------------------------------------------------

    def _admit(self, v: Vector, permit: bool, now: float) -> float:
        """Take ``v`` (and a permit) now and return 0.0, or return the wait and take nothing.

        ``math.inf`` means "until something changes" (a permit is released, a lease arrives).
        """
        raise NotImplementedError

    async def _admit_async(self, v: Vector, permit: bool, now: float) -> float:
        """:meth:`_admit` for the line's head; strict keys override it with a Redis call."""
        return self._admit(v, permit, now)

    def _estimate(self, v: Vector, now: float, ahead: list[float] | None) -> float:
        """The rate wait for ``v`` behind ``ahead`` (summed queued costs), without taking."""
        raise NotImplementedError

    def _adjust(self, delta: Vector | list[float], now: float) -> None:
        """Charge (positive) or refund (negative) a spend after admission."""
        raise NotImplementedError

    def _bursts(self) -> tuple[int, ...] | list[float]:
        return self.spec.bursts

    def _levels(self, now: float) -> list[float]:
        """Available units per limited dimension, in ``spec.dims`` order (for statistics)."""
        raise NotImplementedError

    def _clamp(self, dim: int, remaining: int, now: float) -> None:
        """Lower the bucket of ``dim`` to at most ``remaining``."""

    def _lower_limit(self, dim: int, per_minute: int, now: float) -> None:
        """Apply an effective per-minute limit (already capped at the configured one)."""

    def _on_pause(self, until: float, now: float) -> None:
        """A pause began here (distributed keys share it)."""

    def _permits_free(self) -> bool:
        cap = self.spec.max_concurrent
        return cap is None or self._in_flight < cap

    def _on_release(self) -> None:
        """A permit was returned (distributed keys sync it)."""

    def _extra_statistics(self) -> dict[str, Any]:
        return {}

    def retighten(self, spec: KeySpec) -> None:
        """Adopt a merged spec (another endpoint shares this key with other limits)."""
        self.spec = spec
        self.effective = list(spec.limits)

    def close(self) -> None:
        """The last handle left: wake every waiter so it fails instead of hanging."""
        self.closed = True
        for waiter in self._waiters:
            waiter.event.set()

    # -- admission ---------------------------------------------------------------------------

    def check_fits(self, v: Vector) -> None:
        """Raise :class:`RateLimitExceeded` when ``v`` is larger than a burst (never fits)."""
        bursts = self._bursts()
        for d in self.spec.dims:
            if v[d] > bursts[d]:
                raise RateLimitExceeded(
                    f"cost of {v[d]} {DIM_NAMES[d]} exceeds the burst of {bursts[d]:g} for "
                    f"limit key {self.label}: it can never be admitted",
                    key=self.label,
                    wait=math.inf,
                )

    def queue_ahead(self) -> list[float]:
        """Summed costs of everyone waiting in line."""
        ahead = [0.0, 0.0, 0.0, 0.0]
        for w in self._waiters:
            for d in range(4):
                ahead[d] += w.v[d]
        return ahead

    def estimate(self, v: Vector, now: float) -> float:
        """Seconds ``v`` would wait, in line behind the current waiters (at least the pause)."""
        self.check_fits(v)
        ahead = self.queue_ahead() if self._waiters else None
        return max(self._estimate(v, now, ahead), self._paused_until - now, 0.0)

    def try_acquire(self, cost: Cost) -> float:
        """Take ``cost`` now and return 0.0, or return the wait it needs and take nothing."""
        v = cost._v
        now = self._clock()
        if not self._waiters and now >= self._paused_until:
            wait = self._admit(v, False, now)
            if not wait:
                self.admitted += 1
                return 0.0
        self.rejected += 1
        return self.estimate(v, now)

    async def acquire(self, v: Vector, permit: bool, max_wait: float) -> None:
        """Wait in line until ``v`` (and a permit, if asked) is taken."""
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            raise LimiterUnavailable(f"limit key {self.label} is closed", key=self.label)
        now = self._clock()
        if not self._waiters and now >= self._paused_until:
            wait = self._admit(v, permit, now)
            if not wait:
                self.admitted += 1
                if permit:
                    self._in_flight += 1
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
        await self._wait_in_line(v, permit, max_wait)

    async def _wait_in_line(
        self, v: Vector, permit: bool, max_wait: float, first_wait: float = 0.0
    ) -> None:
        """Queue behind earlier waiters; as the head, admit as soon as the budget allows.

        ``first_wait`` is a wait the caller already learned (strict keys: Redis's answer), so
        the head sleeps it before asking again.
        """
        now = self._clock()
        self.check_fits(v)
        deadline = now + max_wait
        if max_wait < math.inf:
            need = self.estimate(v, now)
            if need > max_wait:
                self.rejected += 1
                raise RateLimitExceeded(
                    f"limit key {self.label} needs {need:.3f}s, more than max_wait {max_wait:g}s",
                    key=self.label,
                    wait=need,
                )
        waiter = _Waiter(v, permit)
        self._waiters.append(waiter)
        try:
            while True:
                if self.closed:
                    raise LimiterUnavailable(
                        f"limit key {self.label} was closed (its endpoint was removed)",
                        key=self.label,
                    )
                now = self._clock()
                if self._waiters[0] is waiter:
                    wait = max(self._paused_until - now, first_wait, 0.0)
                    first_wait = 0.0
                    if not wait:
                        wait = await self._admit_async(v, permit, now)
                        if not wait:
                            break
                        now = self._clock()
                    if math.isfinite(wait) and now + wait > deadline:
                        # Known up front: fail now rather than sleep and fail later.
                        self.rejected += 1
                        raise RateLimitExceeded(
                            f"limit key {self.label} needs {wait:.3f}s more, past max_wait",
                            key=self.label,
                            wait=wait,
                        )
                    wake_at = min(now + wait, deadline)
                else:
                    wake_at = deadline
                if now >= deadline:
                    self.rejected += 1
                    raise RateLimitExceeded(
                        f"waited max_wait {max_wait:g}s in line for limit key {self.label}",
                        key=self.label,
                        wait=self._estimate(v, now, None),
                    )
                with trio.move_on_at(wake_at + self.offset):
                    await waiter.event.wait()
                if waiter.event.is_set():
                    waiter.event = trio.Event()
        except BaseException as exc:
            head = bool(self._waiters) and self._waiters[0] is waiter
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if head:
                self.wake_head()
            if isinstance(exc, trio.Cancelled):
                self.cancelled += 1
            raise
        # Admitted: leave the line and let the next head look (it may fit too). No checkpoint
        # between taking the budget and returning, so cancellation cannot lose it.
        self._waiters.popleft()
        self.admitted += 1
        self.waited += 1
        if permit:
            self._in_flight += 1
        self.wake_head()

    def wake_head(self) -> None:
        """Let the head of the line re-check (budget or permits changed)."""
        if self._waiters:
            event = self._waiters[0].event
            if not event.is_set():
                event.set()

    # -- after admission -----------------------------------------------------------------------

    def adjust(self, delta: list[float]) -> None:
        """Charge or refund after admission and let the line re-check."""
        self._adjust(delta, self._clock())
        if self._waiters:
            self.wake_head()

    def release_permit(self) -> None:
        """Return one concurrency permit."""
        if self._in_flight > 0:
            self._in_flight -= 1
        self._on_release()
        self.wake_head()

    # -- adaptive control -----------------------------------------------------------------------

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Lower limits to the provider's and clamp buckets to its ``remaining``."""
        hints = parse_rate_limit_headers(headers)
        if not hints:
            return
        now = self._clock()
        for dim, hint in hints.items():
            configured = self.spec.limits[dim]
            if not configured:
                continue  # only configured limits adapt: headers never add or raise one
            if hint.limit is not None and hint.limit > 0:
                effective = min(configured, hint.limit)
                if effective != self.effective[dim]:
                    self.effective[dim] = effective
                    self._lower_limit(dim, effective, now)
            if hint.remaining is not None:
                self._clamp(dim, hint.remaining, now)

    def observe_rate_limited(
        self,
        retry_after: float | None,
        headers: Mapping[str, str] | None,
        endpoint: str | None,
    ) -> float:
        """Pause the whole key after a 429; return the pause's end (Trio clock)."""
        now = self._clock()
        cause = "retry_after"
        wait = retry_after
        if wait is None and headers:
            wait = parse_retry_after(headers)
        if wait is None and headers:
            hints = parse_rate_limit_headers(headers)
            exhausted = [
                h.reset for h in hints.values() if h.reset is not None and h.remaining == 0
            ]
            resets = exhausted or [h.reset for h in hints.values() if h.reset is not None]
            if resets:
                wait, cause = max(resets), "reset"
        if wait is None or not math.isfinite(wait) or wait < 0:
            wait, cause = 1.0, "default"
        wait = min(wait, self.spec.limits_config.max_pause)
        if headers:
            self.observe_headers(headers)
        return self.pause(now + wait, cause, endpoint, now) + self.offset

    def pause(self, until: float, cause: str, endpoint: str | None, now: float) -> float:
        """Stop admissions until ``until`` (key time; extends, never shortens, a current
        pause) and return the pause's end in key time."""
        if until <= self._paused_until:
            return self._paused_until
        self._paused_until = until
        self.pauses += 1
        log.warning("limiter %s paused for %.3fs (%s)", self.label, until - now, cause)
        self.registry.publish(
            LimiterPaused(
                at=now + self.offset,
                key=self.label,
                endpoint=endpoint,
                until=until + self.offset,
                cause=cause,
            )
        )
        self._on_pause(until, now)
        return until

    # -- statistics ------------------------------------------------------------------------------

    def statistics(self) -> KeyStatistics:
        """An immutable snapshot of this key."""
        now = self._clock()
        levels = self._levels(now)
        bursts = self._bursts()
        limits = []
        for i, d in enumerate(self.spec.dims):
            burst = float(bursts[d])
            available = levels[i]
            used = 1.0 - available / burst if burst else 0.0
            limits.append(
                LimitStatistics(
                    name=_LIMIT_FIELDS[d],
                    limit=self.spec.limits[d],
                    effective_limit=self.effective[d],
                    burst=round(burst),
                    available=available,
                    utilisation=min(1.0, max(0.0, used)),
                )
            )
        return KeyStatistics(
            key=self.label,
            mode=self.mode,
            limits=tuple(limits),
            max_concurrent=self.spec.max_concurrent,
            in_flight=self._in_flight,
            waiters=len(self._waiters),
            paused_until=self._paused_until + self.offset if self._paused_until > now else None,
            utilisation=max((lim.utilisation for lim in limits), default=0.0),
            admitted=self.admitted,
            waited=self.waited,
            rejected=self.rejected,
            cancelled=self.cancelled,
            pauses=self.pauses,
            **self._extra_statistics(),
        )


class LocalKey(Key):
    """A key whose budget lives in this process (mode ``local``)."""

    def __init__(
        self,
        label: str,
        spec: KeySpec,
        registry: LimiterRegistry,
        clock: Callable[[], float],
        offset: float = 0.0,
    ) -> None:
        super().__init__(label, spec, registry, clock, offset)
        self._install(
            Gcra(
                spec.dims, [float(x) for x in spec.limits], [float(x) for x in spec.bursts], clock()
            )
        )

    def _install(self, gcra: Gcra) -> None:
        self._gcra = gcra
        self._take = gcra.take
        # The hot path reads the bucket's own ``tat`` list (updated in place) and copies of
        # its constants, without a call into it; ``_install`` runs again when they change.
        self._tat = gcra.tat
        dims = gcra.dims
        self._d0 = dims[0] if dims else 0
        self._d1 = dims[1] if len(dims) > 1 else 0
        self._T0 = gcra.T[0] if dims else 0.0
        self._T1 = gcra.T[1] if len(dims) > 1 else 0.0
        self._lim0 = gcra.tau[0] + _EPS if dims else 0.0
        self._lim1 = gcra.tau[1] + _EPS if len(dims) > 1 else 0.0
        if len(dims) == 2:
            self.try_acquire = self._try_acquire2  # type: ignore[method-assign]
        elif len(dims) == 1:
            self.try_acquire = self._try_acquire1  # type: ignore[method-assign]
        else:
            self.try_acquire = self._try_acquire_n  # type: ignore[method-assign]

    # The hot path, flattened for one and two limits (RPM, RPM+TPM): one clock read, the
    # line/pause check and the GCRA step inline, no further calls when admitted.

    def _try_acquire2(self, cost: Cost) -> float:
        now = self._clock()
        if self._waiters or now < self._paused_until:
            return self._refuse(cost, now)
        v = cost._v
        tat = self._tat
        t0 = tat[0]
        if t0 < now:
            t0 = now
        t0 += v[self._d0] * self._T0
        t1 = tat[1]
        if t1 < now:
            t1 = now
        t1 += v[self._d1] * self._T1
        if t0 > now + self._lim0 or t1 > now + self._lim1:
            return self._refuse(cost, now)
        tat[0] = t0
        tat[1] = t1
        self.admitted += 1
        return 0.0

    def _try_acquire1(self, cost: Cost) -> float:
        now = self._clock()
        if self._waiters or now < self._paused_until:
            return self._refuse(cost, now)
        tat = self._tat
        t0 = tat[0]
        if t0 < now:
            t0 = now
        t0 += cost._v[self._d0] * self._T0
        if t0 > now + self._lim0:
            return self._refuse(cost, now)
        tat[0] = t0
        self.admitted += 1
        return 0.0

    def _try_acquire_n(self, cost: Cost) -> float:
        now = self._clock()
        if not self._waiters and now >= self._paused_until and not self._take(cost._v, now):
            self.admitted += 1
            return 0.0
        return self._refuse(cost, now)

    def _refuse(self, cost: Cost, now: float) -> float:
        self.rejected += 1
        return self.estimate(cost._v, now)

    def _admit(self, v: Vector, permit: bool, now: float) -> float:
        if permit and not self._permits_free():
            return math.inf
        return self._take(v, now)

    def _estimate(self, v: Vector, now: float, ahead: list[float] | None) -> float:
        return self._gcra.wait(v, now, ahead)

    def _adjust(self, delta: Vector | list[float], now: float) -> None:
        self._gcra.adjust(delta, now)

    def _bursts(self) -> list[float]:
        return self._gcra.bursts

    def _levels(self, now: float) -> list[float]:
        return [self._gcra.level(i, now) for i in range(len(self.spec.dims))]

    def _clamp(self, dim: int, remaining: int, now: float) -> None:
        self._gcra.clamp(self.spec.dims.index(dim), remaining, now)

    def _lower_limit(self, dim: int, per_minute: int, now: float) -> None:
        burst = min(self.spec.bursts[dim], per_minute)
        self._gcra.set_rate(self.spec.dims.index(dim), per_minute, burst, now)
        self._install(self._gcra)
        self.wake_head()

    def retighten(self, spec: KeySpec) -> None:
        """Adopt a merged (stricter or wider) spec, keeping what is available."""
        now = self._clock()
        old = self._gcra
        levels = {d: old.level(i, now) for i, d in enumerate(old.dims)}
        self.spec = spec
        self.effective = list(spec.limits)
        gcra = Gcra(
            spec.dims, [float(x) for x in spec.limits], [float(x) for x in spec.bursts], now
        )
        for i, d in enumerate(spec.dims):
            if d in levels:
                gcra.clamp(i, levels[d], now)
        self._install(gcra)


# --- reservations -----------------------------------------------------------------------------

_OPEN, _SETTLED, _REFUNDED = 0, 1, 2


class Reservation:
    """Budget taken for one call by :meth:`LimiterHandle.reserve`.

    ``cost`` is the estimate that was taken. After the call, :meth:`settle` with the provider's
    reported usage (the difference is refunded or owed); if the request was never sent,
    :meth:`refund` gives the whole estimate back. Only the first of ``settle``/``refund`` counts;
    later calls do nothing. :meth:`release` returns the concurrency permit (settling at the
    estimate if nothing was settled). As a context manager it releases on exit, and an exit by
    exception (cancellation included) before :meth:`mark_sent` refunds. A reservation dropped
    without release returns its permit when garbage-collected, so permits cannot leak.
    """

    __slots__ = ("__weakref__", "_key", "_permit", "_released", "_sent", "_state", "cost")

    def __init__(self, key: Key, cost: Cost, permit: bool) -> None:
        self._key = key
        self.cost = cost
        self._permit = permit
        self._state = _OPEN
        self._released = False
        self._sent = False

    @property
    def key(self) -> str:
        """The limit key (``provider:fingerprint:family``) the budget came from."""
        return self._key.label

    @property
    def settled(self) -> bool:
        """True once :meth:`settle`, :meth:`refund` or :meth:`release` fixed the spend."""
        return self._state != _OPEN

    @property
    def released(self) -> bool:
        """True once the concurrency permit (if any) was returned."""
        return self._released

    @property
    def sent(self) -> bool:
        """True once :meth:`mark_sent` was called."""
        return self._sent

    def mark_sent(self) -> None:
        """Record that the request went out: from now on an error exit keeps the spend."""
        self._sent = True

    def settle(self, actual: Cost | UsageLike | None = None) -> None:
        """Correct the spend to ``actual`` — a :class:`Cost`, or the provider's reported
        :class:`Usage` — or keep the estimate (``None``). Only the first settle or refund
        counts."""
        if self._state != _OPEN:
            return
        self._state = _SETTLED
        if actual is None:
            return
        if not isinstance(actual, Cost):
            actual = Cost.from_usage(actual, requests=self.cost.requests)
        est = self.cost._v
        act = actual._v
        delta = [float(act[d] - est[d]) for d in range(4)]
        if any(delta):
            self._key.adjust(delta)

    def refund(self) -> None:
        """Give the whole estimate back (the request was never sent). Idempotent; does nothing
        after :meth:`settle`."""
        if self._state != _OPEN:
            return
        self._state = _REFUNDED
        est = self.cost._v
        self._key.adjust([-float(est[d]) for d in range(4)])

    def release(self) -> None:
        """Return the concurrency permit; the estimate stands if nothing was settled."""
        if self._released:
            return
        self._released = True
        if self._state == _OPEN:
            self._state = _SETTLED
        if self._permit:
            self._key.release_permit()

    def _exit(self, exc: BaseException | None) -> None:
        if exc is not None and not self._sent:
            self.refund()
        self.release()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __del__(self) -> None:
        # The holder died without releasing: give the permit back rather than leak it. This
        # may run at any time the garbage collector does, even after the Trio run ended.
        if self._permit and not self._released:
            self._released = True
            with contextlib.suppress(Exception):  # outside a run nothing can be woken
                self._key.release_permit()

    def __repr__(self) -> str:
        state = ("open", "settled", "refunded")[self._state]
        return f"<Reservation {self._key.label} {self.cost!r} {state}>"


# --- the public handle --------------------------------------------------------------------------


class LimiterHandle:
    """The rate limiter of one endpoint (DESIGN §4.6); get it with :meth:`Supervisor.limiter`.

    Budget is kept per key ``(provider, api-key fingerprint, model family)``: calls pass the
    request's ``model`` and :meth:`bind_credential` tells the handle which key the endpoint
    currently uses, so endpoints sharing an API key share its budget.

    - :meth:`try_acquire` (synchronous, never waits) takes a cost or says how long it would wait;
    - :meth:`acquire` waits in line (FIFO per key) for the rate budget;
    - :meth:`reserve` waits for the rate budget *and* a concurrency permit and returns a
      :class:`Reservation` to settle with the real usage;
    - :meth:`observe_headers` / :meth:`observe_rate_limited` feed provider responses back.
    """

    def __init__(
        self,
        endpoint: str,
        provider: str,
        limits: RateLimits,
        registry: LimiterRegistry,
        *,
        default_model: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._provider = provider
        self._limits = limits
        self._spec = KeySpec.from_limits(limits)
        self._registry = registry
        self._default_model = default_model
        self._fingerprint = fingerprint or f"endpoint-{endpoint}"
        self._keys: dict[str | None, Key] = {}  # by model name as passed (None: default)
        self._default: Key | None = None  # _keys[None], read without a dict lookup
        self._used: dict[str, Key] = {}  # by label, for statistics and release
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint this limiter belongs to."""
        return self._endpoint

    @property
    def limits(self) -> RateLimits:
        """The configured limits."""
        return self._limits

    @property
    def mode(self) -> str:
        """``local``, ``approximate`` or ``strict``."""
        return self._limits.mode

    @property
    def fingerprint(self) -> str:
        """The credential fingerprint in the current key (a placeholder until bound)."""
        return self._fingerprint

    def bind_credential(self, secret: Secret) -> None:
        """Use ``secret``'s key from now on (call after resolving or rotating credentials).

        Only its :attr:`Secret.fingerprint` is kept. Reservations already taken settle against
        the key they came from.
        """
        fingerprint = secret.fingerprint
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self._keys.clear()
            self._default = None

    def key(self, model: str | None = None) -> str:
        """The key label (``provider:fingerprint:family``) used for ``model``."""
        return self._key(model).label

    def _key(self, model: str | None) -> Key:
        key = self._keys.get(model)
        if key is None or key.closed:
            if self._closed:
                raise UnknownEndpoint(self._endpoint)
            family = model_family(model or self._default_model)
            label = f"{self._provider}:{self._fingerprint}:{family}"
            key = self._used.get(label)
            if key is None or key.closed:
                key = self._registry.key_for(label, self._spec)
                self._used[label] = key
            self._keys[model] = key
            if model is None:
                self._default = key
        return key

    def try_acquire(self, cost: Cost = _ONE_REQUEST, *, model: str | None = None) -> float:
        """Take ``cost`` from the rate limits now and return ``0.0``, or take nothing and
        return the seconds it would have to wait (an estimate, behind anyone already waiting).

        Never awaits. Concurrency permits are not involved (use :meth:`reserve`). Raises
        :class:`RateLimitExceeded` if the cost exceeds a burst (it could never be admitted), and
        :class:`LimiterUnavailable` when shared limits cannot be checked under ``fail_closed``.
        In ``strict`` mode every admission is a Redis call, so use
        ``await acquire(cost, max_wait=0)`` instead (this raises :class:`TypeError`).
        """
        # Keys cached here are open: closing the handle clears the cache.
        key = self._default if model is None else self._keys.get(model)
        if key is None:
            key = self._key(model)
        return key.try_acquire(cost)

    async def acquire(
        self,
        cost: Cost = _ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float = math.inf,
    ) -> None:
        """Wait in line (FIFO per key) until ``cost`` is taken from the rate limits.

        A waiter that is cancelled takes nothing. If the wait would exceed ``max_wait``
        seconds, raises :class:`RateLimitExceeded` (with the ``wait`` needed) — at once when
        that is known up front. Always a Trio checkpoint.
        """
        await self._key(model).acquire(cost._v, False, max_wait)

    async def reserve(
        self,
        cost: Cost = _ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float = math.inf,
    ) -> Reservation:
        """Wait in line for the rate budget of the estimate ``cost`` and, if ``max_concurrent``
        is set, a concurrency permit; return the :class:`Reservation`.

        Cancellation while waiting takes nothing. ``max_wait`` as for :meth:`acquire`.
        """
        key = self._key(model)
        permit = key.spec.max_concurrent is not None
        await key.acquire(cost._v, permit, max_wait)
        return Reservation(key, cost, permit)

    def observe_headers(self, headers: Mapping[str, str], *, model: str | None = None) -> None:
        """Feed a provider response's rate-limit headers back (any status).

        Reads OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and Anthropic
        ``anthropic-ratelimit-*``: a lower provider limit lowers the effective limit (never
        above the configured one), and each bucket is clamped down to ``remaining``. Only
        configured limits adapt. A no-op when ``adaptive`` is off.
        """
        if not self._limits.adaptive:
            return
        self._key(model).observe_headers(headers)

    def observe_rate_limited(
        self,
        retry_after: float | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> float:
        """Feed a provider 429 back: pause the whole key until its Retry-After.

        ``retry_after`` (seconds, e.g. :attr:`RateLimited.retry_after`) wins; otherwise
        ``headers`` give ``retry-after-ms``/``Retry-After`` or the reset time of an exhausted
        limit; otherwise 1 s. Capped at ``max_pause``. Returns the end of the pause (Trio
        clock). Shared keys spread the pause to every node through Redis.
        """
        return self._key(model).observe_rate_limited(retry_after, headers, self._endpoint)

    def statistics(self) -> LimiterStatistics:
        """An immutable snapshot of every key this endpoint used."""
        keys = tuple(k.statistics() for k in self._used.values() if not k.closed)
        backend = self._registry.backend
        healthy: bool | None = None
        if self._limits.mode != "local":
            healthy = backend is not None and backend.healthy
        return LimiterStatistics(
            endpoint=self._endpoint,
            mode=self._limits.mode,
            keys=keys,
            utilisation=max((k.utilisation for k in keys), default=0.0),
            waiters=sum(k.waiters for k in keys),
            in_flight=sum(k.in_flight for k in keys),
            paused=any(k.paused_until is not None for k in keys),
            fallback=any(k.fallback for k in keys),
            redis_healthy=healthy,
        )

    def _close(self) -> None:
        self._closed = True
        for key in self._used.values():
            self._registry.release_key(key)
        self._used.clear()
        self._keys.clear()
        self._default = None

    def __repr__(self) -> str:
        return f"<LimiterHandle {self._endpoint!r} {self._limits.mode}>"


# --- the registry (one per supervisor) ----------------------------------------------------------


def _static_fingerprint(config: EndpointConfig) -> str | None:
    """The credential fingerprint when it is known without I/O (static or set env var)."""
    cred = config.credential
    if isinstance(cred, StaticCredential):
        return cred.value.fingerprint
    if isinstance(cred, EnvCredential):
        import os

        value = os.environ.get(cred.var)
        if value:
            return Secret(value).fingerprint
    return None


class LimiterRegistry:
    """Every limit key of a supervisor, the endpoints' handles, and the Redis backend.

    Keys are shared by label (and mode): two endpoints with the same provider and API key
    share one budget per model family, enforcing the stricter of their limits.
    """

    def __init__(
        self,
        *,
        node_id: str,
        redis_url: str | None,
        redis_timeout: float,
        publish: Callable[[Event], None],
        start_task: Callable[..., None],
    ) -> None:
        self.node_id = node_id
        self.redis_url = redis_url
        self.redis_timeout = redis_timeout
        self._publish = publish
        self._start_task = start_task
        self._handles: dict[str, LimiterHandle] = {}
        self._keys: dict[tuple[str, str], Key] = {}
        self.backend: RedisBackend | None = None

    def publish(self, event: Event) -> None:
        """Publish a limiter event on the supervisor's bus."""
        self._publish(event)

    def add(self, config: EndpointConfig) -> LimiterHandle:
        """Create the limiter handle of a new endpoint."""
        limits = config.limits
        if limits.mode != "local" and self.redis_url is None:
            raise ConfigError(
                [("limits.mode", f"mode {limits.mode!r} needs the supervisor's redis_url")]
            )
        handle = LimiterHandle(
            config.name,
            config.provider,
            limits,
            self,
            default_model=config.model,
            fingerprint=_static_fingerprint(config),
        )
        self._handles[config.name] = handle
        if limits.mode != "local":
            self._ensure_backend()
        if config.model is not None:
            handle._key(None)  # show the endpoint's own key in statistics from the start
        return handle

    def remove(self, name: str) -> None:
        """Forget an endpoint's handle; keys no other endpoint uses are closed."""
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle._close()

    def handle(self, name: str) -> LimiterHandle:
        """The handle of endpoint ``name``."""
        try:
            return self._handles[name]
        except KeyError:
            raise UnknownEndpoint(name) from None

    def statistics(self, name: str) -> LimiterStatistics | None:
        """The statistics of endpoint ``name``'s limiter (``None`` if it has none)."""
        handle = self._handles.get(name)
        return None if handle is None else handle.statistics()

    def key_for(self, label: str, spec: KeySpec) -> Key:
        """The shared key for ``label`` in ``spec``'s mode, created on first use."""
        mode = spec.limits_config.mode
        key = self._keys.get((label, mode))
        if key is None or key.closed:
            clock, offset = fast_clock()
            if mode == "local":
                key = LocalKey(label, spec, self, clock, offset)
            else:
                backend = self._ensure_backend()
                key = backend.new_key(label, spec, clock, offset)
            self._keys[(label, mode)] = key
        elif spec != key.spec:
            merged = key.spec.merge(spec)
            if merged != key.spec:
                log.warning(
                    "endpoints sharing limit key %s configure different limits; "
                    "enforcing the stricter of each",
                    label,
                )
                key.retighten(merged)
        key._users += 1
        return key

    def release_key(self, key: Key) -> None:
        """One user of ``key`` left; close it when it was the last."""
        key._users -= 1
        if key._users <= 0:
            self._keys.pop((key.label, key.mode), None)
            key.close()

    def _ensure_backend(self) -> RedisBackend:
        if self.backend is None:
            from ._limiter_redis import RedisBackend

            assert self.redis_url is not None
            self.backend = RedisBackend(self, self.redis_url, self.redis_timeout)
            self._start_task("limiter:redis", self.backend.run)
        return self.backend

    def all_keys(self) -> list[Key]:
        """Every open key (for the Redis backend's sync loop)."""
        return list(self._keys.values())
