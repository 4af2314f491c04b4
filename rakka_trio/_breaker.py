"""The circuit breaker: a synchronous state machine shared by every request to one endpoint.

The handle does no I/O and never awaits: request paths call :meth:`BreakerHandle.check` and
:meth:`~BreakerHandle.record_success`/:meth:`~BreakerHandle.record_failure` (or wrap a call
with :meth:`~BreakerHandle.call` / :meth:`~BreakerHandle.guard`) directly, with no channel hop.
Time comes from an injectable clock (``trio.current_time`` by default), so MockClock drives it.
The supervisor's breaker task sleeps until :meth:`~BreakerHandle.next_deadline` and calls
:meth:`~BreakerHandle.poll`, so timed transitions are emitted when they happen.

Every admitted call holds a *token*: the breaker generation for calls admitted while closed or
disabled, a probe id for half-open probes. Outcomes whose token is stale (the breaker moved on
while the call ran) are counted in the totals but cannot move the state machine, so a burst of
late failures from before a trip can never re-open a breaker that has since recovered.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, TypeVarTuple

import attrs
import trio

from ._config import BreakerConfig
from ._errors import CircuitOpen, RakkaError, ServerError
from ._events import BreakerState, Event, ProbeLimitReached, Transition

__all__ = ["BreakerHandle", "BreakerStatistics"]

Ts = TypeVarTuple("Ts")
T = TypeVar("T")

_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_FORCED_OPEN = BreakerState.FORCED_OPEN
_DISABLED = BreakerState.DISABLED

_SUCCESS = 0
_FAILURE = 1
_NEUTRAL = 2  # does not count either way (cancellation, 4xx, 429, content filter, ...)

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


def check_duration(duration: float | None) -> None:
    """Raise :class:`ValueError` unless ``duration`` is ``None`` or a positive, finite number
    of seconds (the operator commands' "for how long")."""
    if duration is None:
        return
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration < math.inf
    ):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")


def _outcome_of(exc: BaseException | None, count_unknown: bool) -> int:
    """Does this exception count against the endpoint? Cancellation never does."""
    if exc is None:
        return _FAILURE
    if not isinstance(exc, Exception):  # trio.Cancelled, KeyboardInterrupt, groups holding them
        return _NEUTRAL
    if isinstance(exc, RakkaError):
        return _FAILURE if exc.counts_as_circuit_failure else _NEUTRAL
    if isinstance(exc, ExceptionGroup):
        outcomes = [_outcome_of(e, count_unknown) for e in exc.exceptions]
        return _FAILURE if _FAILURE in outcomes else _NEUTRAL
    return _FAILURE if count_unknown else _NEUTRAL


class BreakerHandle:
    """Synchronous breaker for one endpoint (see README "Concepts"). Obtain it with
    :meth:`Supervisor.breaker`; every method is safe to call from any task of the run.
    ``on_event`` receives every :class:`Transition` (and :class:`ProbeLimitReached`) as it
    happens; ``clock`` defaults to :func:`trio.current_time`.

    ``check()`` raises :class:`CircuitOpen` when a call must fail fast (in HALF_OPEN it takes a
    probe permit); ``record_success()``/``record_failure(exc)`` report the outcome; ``call`` and
    ``guard`` do all three and are cancellation-safe.
    """

    __slots__ = (
        "_calls",
        "_clock",
        "_config",
        "_consecutive",
        "_consecutive_trips",
        "_fail_idx",
        "_fast",
        "_fast_closed",
        "_forced_by",
        "_forced_reason",
        "_gen",
        "_ignored",
        "_listener",
        "_name",
        "_next_probe",
        "_open_until",
        "_opened_at",
        "_probe_expired",
        "_probe_failures",
        "_probe_limit_reported",
        "_probe_ok",
        "_probe_successes",
        "_probes",
        "_rejected",
        "_slow_idx",
        "_state",
        "_trips",
        "_tw",
        "_tw_calls",
        "_tw_fails",
        "_tw_slow",
        "_wake",
        "_window_failures",
        "_window_start",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = trio.current_time,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self._name = name
        self._config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._listener = on_event
        self._wake: Callable[[], None] | None = None
        self._state = _CLOSED
        self._gen = 0
        self._consecutive = 0
        self._calls = 0  # outcomes recorded through the window while closed/disabled
        self._window_start = 0
        self._window_failures = 0  # total counted failures recorded through the window
        self._fail_idx: deque[int] = deque()
        self._slow_idx: deque[int] = deque()
        self._tw: deque[list[float]] = deque()  # [bucket_start, calls, failures, slow]
        self._tw_calls = 0
        self._tw_fails = 0
        self._tw_slow = 0
        self._opened_at: float | None = None
        self._open_until: float | None = None
        self._trips = 0
        self._consecutive_trips = 0
        self._probes: dict[int, float] = {}  # probe id -> permit lease deadline
        self._next_probe = 1
        self._probe_successes = 0
        self._probe_limit_reported = False
        self._probe_ok = 0
        self._probe_failures = 0
        self._probe_expired = 0
        self._ignored = 0
        self._rejected = 0
        self._forced_reason: str | None = None
        self._forced_by: str | None = None
        cfg = self._config
        # The fast path of call(): closed, count window, no slow-call timing.
        self._fast = cfg.window_type == "count" and cfg.slow_call_duration is None
        self._fast_closed = self._fast  # _fast and currently CLOSED: one load on the hot path

    # --- public properties ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The endpoint this breaker guards."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The rules in force."""
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state (time-based transitions are applied first)."""
        if self._state is not _CLOSED:
            self.poll()
        return self._state

    # --- hot path ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`CircuitOpen` if a call must fail fast now.

        In HALF_OPEN this takes one of the ``half_open_max_probes`` permits; the matching
        ``record_success``/``record_failure`` returns it (as does the probe timeout).
        """
        if self._state is _CLOSED:
            return
        self._acquire()

    def record_success(self, duration: float | None = None) -> None:
        """Report a successful call (``duration`` in seconds feeds the slow-call rule)."""
        self._settle(self._raw_token(), _SUCCESS, None, duration)

    def record_failure(
        self, exc: BaseException | None = None, duration: float | None = None
    ) -> None:
        """Report a failed call. ``exc`` decides whether it counts: cancellations, 429s, other
        4xx and content filtering never do (the probe permit, if any, is returned)."""
        self._settle(
            self._raw_token(), _outcome_of(exc, self._config.count_unknown_errors), exc, duration
        )

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts) -> T:
        """``check()``, await ``fn(*args)``, record its outcome, return its result.

        Exceptions propagate unchanged; cancellation never counts and returns the probe permit.
        Like Trio's own APIs it takes positional arguments only (use :func:`functools.partial`
        for keywords): this is the hot path, and keyword forwarding costs a third of it.
        """
        if self._fast_closed:
            gen = self._gen
            try:
                result = await fn(*args)
            except BaseException as exc:
                self._settle(gen, _outcome_of(exc, self._config.count_unknown_errors), exc, None)
                raise
            if gen == self._gen:  # still the same closed period
                self._consecutive = 0
                self._calls += 1
            else:
                self._settle(gen, _SUCCESS, None, None)
            return result
        token = self._acquire()
        start = self._clock() if self._config.slow_call_duration is not None else 0.0
        try:
            result = await fn(*args)
        except BaseException as exc:
            self._finish(token, exc, self._since(start))
            raise
        self._finish(token, None, self._since(start))
        return result

    def guard(self) -> _Guard:
        """``async with handle.guard(): ...`` — the same as :meth:`call` for a block."""
        return _Guard(self)

    # --- operator commands --------------------------------------------------------------------

    def force_open(
        self, duration: float | None = None, *, reason: str | None = None, actor: str = "api"
    ) -> None:
        """Hold the breaker open for ``duration`` seconds (``None``: until :meth:`reset`)."""
        until = self._until(duration)
        self._forced_reason, self._forced_by = reason, actor
        self._opened_at = self._clock()
        self._transition(_FORCED_OPEN, "forced", until=until, actor=actor, reason=reason)

    def disable(
        self, duration: float | None = None, *, reason: str | None = None, actor: str = "api"
    ) -> None:
        """Bypass the breaker (always pass, keep counting) for ``duration`` s or until reset."""
        until = self._until(duration)
        self._forced_reason, self._forced_by = reason, actor
        self._transition(_DISABLED, "disabled", until=until, actor=actor, reason=reason)

    def reset(self, *, reason: str | None = None, actor: str = "api") -> None:
        """Force-close: clear any forced state, counts and the open-duration growth."""
        self._consecutive_trips = 0
        self._forced_reason = self._forced_by = None
        self._transition(_CLOSED, "reset", actor=actor, reason=reason)

    # --- timers ---------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The Trio time of the next timed transition or permit expiry (``inf`` if none)."""
        st = self._state
        if st is _OPEN or st is _FORCED_OPEN or st is _DISABLED:
            return self._open_until if self._open_until is not None else math.inf
        if st is _HALF_OPEN and self._probes:
            return min(self._probes.values())
        return math.inf

    def poll(self) -> None:
        """Apply every transition that is due at the current time."""
        st = self._state
        if st is _CLOSED:
            return
        now = self._clock()
        if st is _OPEN or st is _FORCED_OPEN:
            if self._open_until is not None and now >= self._open_until:
                self._forced_reason = self._forced_by = None
                self._transition(_HALF_OPEN, "timer", now=now)
        elif st is _DISABLED:
            if self._open_until is not None and now >= self._open_until:
                self._forced_reason = self._forced_by = None
                self._transition(_CLOSED, "timer", now=now)
        elif st is _HALF_OPEN and self._probes:
            expired = [pid for pid, deadline in self._probes.items() if now >= deadline]
            for pid in expired:
                del self._probes[pid]
            self._probe_expired += len(expired)

    def statistics(self) -> BreakerStatistics:
        """An immutable snapshot of counts and state."""
        self.poll()
        calls, fails, slow = self._window_counts()
        return BreakerStatistics(
            endpoint=self._name,
            state=self._state,
            consecutive_failures=self._consecutive,
            calls_in_window=calls,
            failures_in_window=fails,
            slow_calls_in_window=slow,
            failure_rate=(fails / calls) if calls and calls >= self._config.minimum_calls else None,
            successes=self._calls - self._window_failures + self._probe_ok,
            failures=self._window_failures + self._probe_failures,
            ignored=self._ignored,
            rejected=self._rejected,
            trips=self._trips,
            opened_at=self._opened_at,
            open_until=self._open_until,
            probes_in_flight=len(self._probes),
            probe_permits_expired=self._probe_expired,
            forced_reason=self._forced_reason,
            forced_by=self._forced_by,
        )

    def __repr__(self) -> str:
        return f"<BreakerHandle {self._name!r} {self._state.value}>"

    # --- internals ------------------------------------------------------------------------

    def _since(self, start: float) -> float | None:
        return self._clock() - start if self._config.slow_call_duration is not None else None

    def _until(self, duration: float | None) -> float:
        check_duration(duration)
        return math.inf if duration is None else self._clock() + duration

    def _acquire(self) -> int:
        """Admit one call or raise CircuitOpen; return the call's token."""
        st = self._state
        if st is _CLOSED or st is _DISABLED:
            return self._gen
        now = self._clock()
        if st is not _HALF_OPEN:
            self.poll()
            st = self._state
            if st is _CLOSED or st is _DISABLED:
                return self._gen
        if st is _HALF_OPEN:
            if self._probes:
                self.poll()
            if len(self._probes) < self._config.half_open_max_probes:
                pid = self._next_probe
                self._next_probe += 1
                self._probes[pid] = now + self._config.probe_timeout
                if self._wake is not None and len(self._probes) == 1:
                    self._wake()  # the task must now watch this permit's lease
                return -pid
            self._rejected += 1
            if not self._probe_limit_reported:
                self._probe_limit_reported = True
                if self._listener is not None:
                    self._listener(
                        ProbeLimitReached(
                            at=now, endpoint=self._name, probes_in_flight=len(self._probes)
                        )
                    )
            raise CircuitOpen(
                self._name,
                state=st.value,
                opened_at=self._opened_at if self._opened_at is not None else now,
                retry_at=now,
                reason="half-open probe limit reached",
            )
        self._rejected += 1
        raise CircuitOpen(
            self._name,
            state=st.value,
            opened_at=self._opened_at if self._opened_at is not None else now,
            retry_at=self._open_until if self._open_until is not None else math.inf,
            reason=self._forced_reason,
        )

    def _raw_token(self) -> int:
        """Token for the raw record_* API: the oldest probe in HALF_OPEN, else the generation."""
        if self._state is _HALF_OPEN and self._probes:
            return -next(iter(self._probes))
        return self._gen

    def _finish(self, token: int, exc: BaseException | None, duration: float | None) -> None:
        """Report the outcome of the call admitted with ``token`` (``exc`` None: success)."""
        if exc is None:
            self._settle(token, _SUCCESS, None, duration)
        else:
            self._settle(token, _outcome_of(exc, self._config.count_unknown_errors), exc, duration)

    def _release(self, token: int) -> None:
        """End the call admitted with ``token`` without an outcome (the caller left early)."""
        self._settle(token, _NEUTRAL, None, None)

    def _settle(
        self, token: int, outcome: int, exc: BaseException | None, duration: float | None
    ) -> None:
        if outcome == _NEUTRAL:
            self._ignored += 1
            if token < 0:
                self._probes.pop(-token, None)
            return
        cfg = self._config
        if token < 0:  # a half-open probe
            if self._probes.pop(-token, None) is None or self._state is not _HALF_OPEN:
                self._ignored += 1  # permit expired or the breaker moved on: stale
                return
            if outcome == _SUCCESS:
                self._probe_ok += 1
                self._probe_successes += 1
                if self._probe_successes >= cfg.success_threshold:
                    self._consecutive_trips = 0
                    self._transition(_CLOSED, "probe_succeeded")
            else:
                self._probe_failures += 1
                self._trip("probe_failed", exc)
            return
        st = self._state
        if token != self._gen or not (st is _CLOSED or st is _DISABLED):
            self._ignored += 1  # admitted before the breaker moved on: stale
            return
        slow = (
            duration is not None
            and cfg.slow_call_duration is not None
            and duration >= cfg.slow_call_duration
        )
        self._calls += 1
        if outcome == _SUCCESS:
            self._consecutive = 0
        else:
            self._consecutive += 1
            self._window_failures += 1
        if cfg.window_type == "count":
            if outcome == _FAILURE:
                self._fail_idx.append(self._calls)
            if slow:
                self._slow_idx.append(self._calls)
        else:
            self._time_window_add(self._clock(), outcome == _FAILURE, slow)
        if st is _DISABLED:
            return
        if outcome == _FAILURE:
            if self._consecutive >= cfg.failure_threshold:
                self._trip("failure_threshold", exc)
                return
            if cfg.failure_rate_threshold is not None:
                calls, fails, _ = self._window_counts()
                if calls >= cfg.minimum_calls and fails / calls >= cfg.failure_rate_threshold:
                    self._trip("failure_rate", exc)
                    return
        if slow and cfg.slow_call_rate_threshold is not None:
            calls, _, slow_calls = self._window_counts()
            if calls >= cfg.minimum_calls and slow_calls / calls >= cfg.slow_call_rate_threshold:
                self._trip("slow_call_rate", exc)

    def _window_counts(self) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the current sliding window."""
        cfg = self._config
        if cfg.window_type == "count":
            floor = max(self._calls - cfg.window_size, self._window_start)
            fi, si = self._fail_idx, self._slow_idx
            while fi and fi[0] <= floor:
                fi.popleft()
            while si and si[0] <= floor:
                si.popleft()
            return self._calls - floor, len(fi), len(si)
        self._time_window_evict(self._clock())
        return self._tw_calls, self._tw_fails, self._tw_slow

    def _time_window_add(self, now: float, failure: bool, slow: bool) -> None:
        width = self._config.window_duration / _TIME_BUCKETS
        start = now - (now % width)
        tw = self._tw
        if not tw or tw[-1][0] != start:
            tw.append([start, 0, 0, 0])
        self._time_window_evict(now)
        bucket = tw[-1]
        bucket[1] += 1
        self._tw_calls += 1
        if failure:
            bucket[2] += 1
            self._tw_fails += 1
        if slow:
            bucket[3] += 1
            self._tw_slow += 1

    def _time_window_evict(self, now: float) -> None:
        horizon = now - self._config.window_duration
        tw = self._tw
        while tw and tw[0][0] + self._config.window_duration / _TIME_BUCKETS <= horizon:
            _, calls, fails, slow = tw.popleft()
            self._tw_calls -= int(calls)
            self._tw_fails -= int(fails)
            self._tw_slow -= int(slow)

    def _trip(self, cause: str, exc: BaseException | None) -> None:
        cfg = self._config
        now = self._clock()
        duration = min(
            cfg.open_duration * cfg.open_duration_multiplier**self._consecutive_trips,
            cfg.open_duration_max,
        )
        if cfg.honor_retry_after and isinstance(exc, ServerError) and exc.retry_after:
            duration = max(duration, min(exc.retry_after, cfg.open_duration_max))
        self._consecutive_trips += 1
        self._trips += 1
        self._opened_at = now
        self._transition(_OPEN, cause, now=now, until=now + duration)

    def _transition(
        self,
        to: BreakerState,
        cause: str,
        *,
        now: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> None:
        if now is None:
            now = self._clock()
        calls, fails, _ = self._window_counts()
        event = Transition(
            at=now,
            endpoint=self._name,
            from_state=self._state,
            to_state=to,
            cause=cause,
            consecutive_failures=self._consecutive,
            failure_rate=(fails / calls) if calls else None,
            calls_in_window=calls,
            trips=self._trips,
            open_until=until,
            actor=actor,
            reason=reason,
        )
        self._state = to
        self._fast_closed = self._fast and to is _CLOSED
        self._gen += 1
        self._open_until = until
        if to is _CLOSED:
            self._opened_at = None
        self._probes.clear()
        self._probe_successes = 0
        self._probe_limit_reported = False
        # Each state starts a fresh window: old evidence already had its say.
        self._consecutive = 0
        self._window_start = self._calls
        self._fail_idx.clear()
        self._slow_idx.clear()
        self._tw.clear()
        self._tw_calls = self._tw_fails = self._tw_slow = 0
        if self._listener is not None:
            self._listener(event)
        if self._wake is not None:
            self._wake()


class _Guard:
    """Async context manager returned by :meth:`BreakerHandle.guard`."""

    __slots__ = ("_handle", "_start", "_token")

    def __init__(self, handle: BreakerHandle) -> None:
        self._handle = handle
        self._token = 0
        self._start = 0.0

    async def __aenter__(self) -> None:
        h = self._handle
        if h._fast_closed:
            self._token = h._gen
            return
        self._token = h._acquire()
        if h._config.slow_call_duration is not None:
            self._start = h._clock()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        h = self._handle
        if exc is None and self._token == h._gen and h._fast_closed:
            h._consecutive = 0
            h._calls += 1
            return
        h._finish(self._token, exc, h._since(self._start))
