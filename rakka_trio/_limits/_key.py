"""A limit key: the FIFO waiting line, permits, debts, clamps and pauses (no I/O)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from .._errors import (
    LimiterUnavailable,
    RateLimitExceeded,
    parse_retry_after,
)
from ._cost import DIM_NAMES, LIMIT_FIELDS, Cost, Vector
from ._gcra import KeySpec
from ._headers import parse_rate_limit_headers
from ._stats import KeyStatistics, LimiterPaused, LimitStatistics

if TYPE_CHECKING:
    from ._registry import LimiterRegistry

log = logging.getLogger("rakka_trio.limiter")

#: The wait reported for a refusal whose budget is there but whose turn has not come (the
#: line is about to move): never 0.0, which means "admitted".
MIN_REFUSED_WAIT = 0.001

#: An awaited admission that needs no wait returns without yielding to the scheduler, except
#: every this-many-th one on a key: a loop of admissions cannot starve other tasks, and the
#: yield (several times the cost of the admission itself) is paid only now and then.
ADMISSIONS_PER_YIELD = 32


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
        self.provider = label.partition(":")[0]  # labels are provider:fingerprint:family
        self.spec = spec
        self.registry = registry
        # Key time is ``clock()``; Trio time is key time + ``offset`` (see fast_clock).
        self._clock = clock
        self.offset = offset
        self._waiters: deque[_Waiter] = deque()
        self._paused_until = -math.inf
        self._in_flight = 0
        self._users = 0  # handles sharing this key
        self.reserved = 0  # reservations taken and not yet released
        self.retired = False  # no handle uses it any more: dropped as soon as it is idle
        self.closed = False
        self.effective = list(spec.limits)  # per-minute limits after adaptive lowering
        self.admitted = 0
        self.waited = 0
        self.rejected = 0
        self.cancelled = 0
        self.pauses = 0
        self._unyielded = 0  # admissions in a row without waiting or yielding (see acquire)

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

    def _permit_wait(self) -> float:
        """Seconds until a concurrency permit could be had: 0.0 when one is free here,
        ``math.inf`` when none is free and no time is known (they free as calls end)."""
        return 0.0 if self._permits_free() else math.inf

    def _refuses(self, v: Vector, now: float) -> bool:
        """True when an admission would be refused outright (shared keys: ``fail_closed``)."""
        return False

    def _full(self, now: float) -> bool:
        """True when dropping this key and re-creating it later grants nothing extra."""
        return True

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
        """Seconds of *rate* budget ``v`` would wait, in line behind the current waiters (at
        least the pause). Permits are not included: see :meth:`wait_needed`."""
        self.check_fits(v)
        ahead = self.queue_ahead() if self._waiters else None
        return max(self._estimate(v, now, ahead), self._paused_until - now, 0.0)

    def wait_needed(self, v: Vector, permit: bool, now: float) -> float:
        """Seconds an admission of ``v`` (with a permit, if asked) would wait now, changing
        nothing: 0.0 when it would be admitted at once; ``math.inf`` when it never fits, is
        refused (closed, ``fail_closed`` without Redis), or waits for a concurrency permit
        (no time is known for that)."""
        if self.closed or self._refuses(v, now):
            return math.inf
        bursts = self._bursts()
        for d in self.spec.dims:
            if v[d] > bursts[d]:
                return math.inf
        waiters = self._waiters
        permit_wait = 0.0
        if permit or any(w.permit for w in waiters):
            permit_wait = self._permit_wait()  # itself, or behind, a wait for a permit
            if permit_wait == math.inf:
                return math.inf
        ahead = self.queue_ahead() if waiters else None
        wait = max(self._estimate(v, now, ahead), self._paused_until - now, permit_wait, 0.0)
        if waiters and wait < MIN_REFUSED_WAIT:
            wait = MIN_REFUSED_WAIT  # the budget is there, but others are first in line
        return wait

    def try_acquire(self, cost: Cost) -> float:
        """Take ``cost`` now and return 0.0, or return the wait it needs (always > 0) and take
        nothing."""
        v = cost._v
        now = self._clock()
        if not self._waiters and now >= self._paused_until:
            wait = self._admit(v, False, now)
            if not wait:
                self.admitted += 1
                return 0.0
        return self.refuse(v, now)

    def refuse(self, v: Vector, now: float) -> float:
        """Count a refused :meth:`try_acquire` and return the wait it needs (never 0.0)."""
        self.rejected += 1
        self.check_fits(v)
        return max(self.wait_needed(v, False, now), MIN_REFUSED_WAIT)

    async def acquire(self, v: Vector, permit: bool, max_wait: float) -> None:
        """Wait in line until ``v`` (and a permit, if asked) is taken.

        Cancellation is checked on entry (a cancelled caller takes nothing). With nobody in
        line and the budget there, the admission is immediate and does not yield to the
        scheduler, except every :data:`ADMISSIONS_PER_YIELD`-th time (after taking the
        budget, shielded, so it cannot be lost); any other admission waits in line.
        """
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        await checkpoint_if_cancelled()
        if self.closed:
            raise LimiterUnavailable(f"limit key {self.label} is closed", key=self.label)
        now = self._clock()
        # Only with nobody in line: a caller never overtakes a waiter.
        if not self._waiters and now >= self._paused_until and not self._admit(v, permit, now):
            self.admitted += 1
            if permit:
                self._in_flight += 1
            self._unyielded += 1
            if self._unyielded >= ADMISSIONS_PER_YIELD:
                self._unyielded = 0
                await cancel_shielded_checkpoint()
            return
        self._unyielded = 0  # waiting in line yields
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

    # -- eviction ---------------------------------------------------------------------------------

    def activity(self) -> tuple[int, ...]:
        """Counters that change whenever the key is used (the registry's idle detector)."""
        return (
            self.admitted,
            self.rejected,
            self.cancelled,
            self._in_flight,
            self.reserved,
            len(self._waiters),
        )

    def evictable(self) -> bool:
        """True when the key can be dropped now: nobody waits, holds a permit or a
        reservation, no pause runs, and (local keys) the bucket is full again, so that
        re-creating it later grants nothing extra."""
        now = self._clock()
        return (
            not self._waiters
            and self._in_flight == 0
            and self.reserved == 0
            and now >= self._paused_until
            and self._full(now)
        )

    # -- adaptive control -----------------------------------------------------------------------

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Lower limits to the provider's and clamp buckets to its ``remaining``."""
        if not self.spec.dims:
            return  # only configured limits adapt: spare every response the parsing
        hints = parse_rate_limit_headers(headers, provider=self.provider)
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
            hints = parse_rate_limit_headers(headers, provider=self.provider)
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
        if wait <= 0:
            return max(now, self._paused_until) + self.offset  # max_pause = 0: no pauses
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
                    name=LIMIT_FIELDS[d],
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
