"""The circuit breaker: a synchronous state machine shared by every request to one endpoint.

The handle does no I/O and never awaits: a call takes a :class:`BreakerPermit` from
:meth:`BreakerHandle.check` and reports its outcome on it (or :meth:`~BreakerHandle.call` /
:meth:`~BreakerHandle.guard` do both). Time comes from an injectable clock, so MockClock drives
it. Every transition starts a new generation; an outcome reported on an earlier generation's
permit is stale, counted as ignored, and never moves the breaker. Reads (``state``,
``statistics()``, ``repr``) change nothing: timed transitions are applied and published by the
supervisor's breaker task, which sleeps until :meth:`~BreakerHandle.next_deadline` and calls
:meth:`~BreakerHandle.poll`, or by the next ``check()``. See docs/breaker.md.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, TypeVarTuple, final

import trio

from ._breaker_counts import FAILURE, NEUTRAL, SUCCESS, BreakerStatistics, OutcomeWindow, outcome_of
from ._config import BreakerConfig
from ._errors import CircuitOpen, ServerError
from ._events import BreakerState, Event, ProbeLimitReached, Transition

__all__ = ["BreakerHandle", "BreakerPermit", "BreakerStatistics"]

Ts = TypeVarTuple("Ts")
T = TypeVar("T")

_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_FORCED_OPEN = BreakerState.FORCED_OPEN
_DISABLED = BreakerState.DISABLED


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


@final
class BreakerPermit:
    """The right of one admitted call to report its outcome, from :meth:`BreakerHandle.check`.

    Report it exactly once, on the handle that issued it: ``record_success(permit)``,
    ``record_failure(permit, exc)`` or ``release(permit)``. Calls admitted while the breaker is
    closed (or disabled) share one permit per generation, so taking one costs nothing; a
    half-open probe gets its own, returned by its report or after ``probe_timeout``. A permit
    from an earlier generation is stale: its outcome is counted as ignored and never moves the
    breaker.
    """

    __slots__ = ("_handle", "_probe")

    def __init__(self, handle: BreakerHandle, probe: int) -> None:
        self._handle = handle
        self._probe = probe  # 0: a closed/disabled generation's shared permit

    @property
    def is_probe(self) -> bool:
        """True for a half-open probe's permit."""
        return self._probe != 0

    def __repr__(self) -> str:
        kind = f"probe #{self._probe}" if self._probe else "call"
        return f"<BreakerPermit {self._handle.name!r} {kind}>"


class BreakerHandle:
    """Synchronous breaker for one endpoint (see docs/breaker.md). Obtain it with
    :meth:`Supervisor.breaker`; every method is safe to call from any task of the run.
    ``on_event`` receives every :class:`Transition` (and :class:`ProbeLimitReached`) as it
    happens; ``clock`` defaults to :func:`trio.current_time`.

    ``permit = check()`` raises :class:`CircuitOpen` when a call must fail fast (in HALF_OPEN
    it takes a probe permit); ``record_success(permit)``, ``record_failure(permit, exc)`` and
    ``release(permit)`` report the outcome; ``call`` and ``guard`` do all of it and are
    cancellation-safe.
    """

    __slots__ = (
        "_calls",
        "_clock",
        "_closed_guard",
        "_config",
        "_consecutive",
        "_consecutive_trips",
        "_fast",
        "_fast_closed",
        "_forced_by",
        "_forced_reason",
        "_ignored",
        "_listener",
        "_name",
        "_next_probe",
        "_open_until",
        "_opened_at",
        "_permit",
        "_probe_expired",
        "_probe_failures",
        "_probe_limit_reported",
        "_probe_ok",
        "_probe_successes",
        "_probes",
        "_rejected",
        "_state",
        "_trips",
        "_wake",
        "_window",
        "_window_failures",
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
        self._permit = BreakerPermit(self, 0)  # this generation's shared permit
        self._closed_guard = _ClosedGuard(self, self._permit)
        self._consecutive = 0
        self._calls = 0  # outcomes recorded through the window while closed/disabled
        self._window_failures = 0  # total counted failures recorded through the window
        self._window = OutcomeWindow(self._config)
        self._opened_at: float | None = None
        self._open_until: float | None = None
        self._trips = self._consecutive_trips = 0
        self._probes: dict[int, float] = {}  # probe id -> permit lease deadline
        self._next_probe = 1
        self._probe_successes = 0
        self._probe_limit_reported = False
        self._probe_ok = self._probe_failures = self._probe_expired = 0
        self._ignored = self._rejected = 0
        self._forced_reason: str | None = None
        self._forced_by: str | None = None
        cfg = self._config
        # The fast path: closed, count window, no slow-call timing.
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
        """The state a call meets now. Reading it changes nothing: a timed transition that is
        due shows here at once and is published by the breaker task (or the next ``check``)."""
        st = self._state
        if st is _CLOSED or st is _HALF_OPEN:
            return st
        due = self._due(self._clock())
        return st if due is None else due

    # --- hot path ---------------------------------------------------------------------------

    def check(self) -> BreakerPermit:
        """Admit one call and return its permit, or raise :class:`CircuitOpen` if it must fail
        fast. Report the call's outcome on the permit exactly once.

        In HALF_OPEN this takes one of the ``half_open_max_probes`` probe permits, which its
        report (or ``probe_timeout``) returns.
        """
        if self._state is _CLOSED:
            return self._permit
        return self._admit()

    def record_success(self, permit: BreakerPermit, duration: float | None = None) -> None:
        """Report that the call admitted with ``permit`` succeeded (``duration`` in seconds
        feeds the slow-call rule)."""
        if permit is self._permit and self._fast_closed:
            self._consecutive = 0
            self._calls += 1
            return
        self._settle(permit, SUCCESS, None, duration)

    def record_failure(
        self,
        permit: BreakerPermit,
        exc: BaseException | None = None,
        duration: float | None = None,
    ) -> None:
        """Report that the call admitted with ``permit`` failed. ``exc`` decides whether it
        counts (``None``: it does): cancellations, 429s, other 4xx and content filtering never
        do, and a probe's permit comes back."""
        self._settle(permit, outcome_of(exc, self._config.count_unknown_errors), exc, duration)

    def release(self, permit: BreakerPermit) -> None:
        """End the call admitted with ``permit`` without an outcome (it was abandoned before
        it could tell anything about the endpoint); a probe's permit comes back."""
        self._settle(permit, NEUTRAL, None, None)

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts) -> T:
        """``check()``, await ``fn(*args)``, record its outcome, return its result.

        Exceptions propagate unchanged; cancellation never counts and returns the probe permit.
        Like Trio's own APIs it takes positional arguments only (use :func:`functools.partial`
        for keywords): this is the hot path, and keyword forwarding costs a third of it.
        """
        if self._fast_closed:
            permit = self._permit
            try:
                result = await fn(*args)
            except BaseException as exc:
                self._report(permit, exc, None)
                raise
            if permit is self._permit:  # still the same closed generation
                self._consecutive = 0
                self._calls += 1
            else:
                self._report(permit, None, None)
            return result
        permit = self.check()
        start = self._clock() if self._config.slow_call_duration is not None else 0.0
        try:
            result = await fn(*args)
        except BaseException as exc:
            self._report(permit, exc, self._since(start))
            raise
        self._report(permit, None, self._since(start))
        return result

    def guard(self) -> _Guard | _ClosedGuard:
        """``async with handle.guard(): ...`` — the same as :meth:`call` for a block. Enter
        the context manager where you create it, as written here."""
        if self._fast_closed:
            return self._closed_guard  # no allocation per call: most of guard()'s cost
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

    def set_wakeup(self, wake: Callable[[], None] | None) -> None:
        """Have ``wake()`` called (synchronously) whenever :meth:`next_deadline` may have
        moved; ``None`` stops it. The supervisor's breaker task uses it to re-read the deadline."""
        self._wake = wake

    def next_deadline(self) -> float:
        """The Trio time of the next timed transition or permit expiry (``inf`` if none)."""
        st = self._state
        if st is _OPEN or st is _FORCED_OPEN or st is _DISABLED:
            return self._open_until if self._open_until is not None else math.inf
        if st is _HALF_OPEN and self._probes:
            return min(self._probes.values())
        return math.inf

    def poll(self) -> None:
        """Apply (and publish) the timed transition that is due now, and take back probe
        permits whose lease expired."""
        st = self._state
        if st is _CLOSED:
            return
        now = self._clock()
        due = self._due(now)
        if due is not None:
            self._forced_reason = self._forced_by = None
            self._transition(due, "timer", now=now)
        elif st is _HALF_OPEN and self._probes:
            expired = [pid for pid, deadline in self._probes.items() if now >= deadline]
            for pid in expired:
                del self._probes[pid]
            self._probe_expired += len(expired)

    def statistics(self) -> BreakerStatistics:
        """An immutable snapshot of counts and state (reading it changes nothing; a due timed
        transition shows as already applied, as :attr:`state` does)."""
        now = self._clock()
        due = self._due(now)
        if due is None:
            state, consecutive, open_until = self._state, self._consecutive, self._open_until
            calls, fails, slow = self._window_counts()
            probes = sum(1 for lease_end in self._probes.values() if now < lease_end)
            expired = len(self._probes) - probes
            opened_at, reason, actor = self._opened_at, self._forced_reason, self._forced_by
        else:  # as the timer transition will leave it: a fresh window, no timer, no probes
            state, consecutive, open_until = due, 0, None
            calls = fails = slow = probes = expired = 0
            opened_at = None if due is _CLOSED else self._opened_at
            reason = actor = None
        return BreakerStatistics(
            endpoint=self._name,
            state=state,
            consecutive_failures=consecutive,
            calls_in_window=calls,
            failures_in_window=fails,
            slow_calls_in_window=slow,
            failure_rate=(fails / calls) if calls and calls >= self._config.minimum_calls else None,
            successes=self._calls - self._window_failures + self._probe_ok,
            failures=self._window_failures + self._probe_failures,
            ignored=self._ignored,
            rejected=self._rejected,
            trips=self._trips,
            opened_at=opened_at,
            open_until=open_until,
            probes_in_flight=probes,
            probe_permits_expired=self._probe_expired + expired,
            forced_reason=reason,
            forced_by=actor,
        )

    def __repr__(self) -> str:
        return f"<BreakerHandle {self._name!r} {self.state.value}>"

    # --- internals ------------------------------------------------------------------------

    def _due(self, now: float) -> BreakerState | None:
        """The state a timer due at ``now`` moves to (``None``: nothing is due)."""
        until = self._open_until
        if until is None or now < until:
            return None
        st = self._state
        if st is _OPEN or st is _FORCED_OPEN:
            return _HALF_OPEN
        return _CLOSED if st is _DISABLED else None

    def _window_counts(self) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the current sliding window."""
        return self._window.counts(self._calls, self._clock())

    def _since(self, start: float) -> float | None:
        return self._clock() - start if self._config.slow_call_duration is not None else None

    def _until(self, duration: float | None) -> float:
        check_duration(duration)
        return math.inf if duration is None else self._clock() + duration

    def _admit(self) -> BreakerPermit:
        """``check()`` outside CLOSED: apply what is due, then admit, take a probe or refuse."""
        self.poll()
        st = self._state
        if st is _CLOSED or st is _DISABLED:
            return self._permit
        now = self._clock()
        if st is _HALF_OPEN and len(self._probes) < self._config.half_open_max_probes:
            pid = self._next_probe
            self._next_probe += 1
            self._probes[pid] = now + self._config.probe_timeout
            if self._wake is not None and len(self._probes) == 1:
                self._wake()  # the task must now watch this permit's lease
            return BreakerPermit(self, pid)
        self._rejected += 1
        reason: str | None = "half-open probe limit reached"
        if st is _HALF_OPEN:
            retry_at = now
            if not self._probe_limit_reported:  # once per half-open period: a flood stays quiet
                self._probe_limit_reported = True
                if self._listener is not None:
                    limit = ProbeLimitReached(
                        at=now, endpoint=self._name, probes_in_flight=len(self._probes)
                    )
                    self._listener(limit)
        else:
            retry_at = self._open_until if self._open_until is not None else math.inf
            reason = self._forced_reason
        opened_at = self._opened_at if self._opened_at is not None else now
        raise CircuitOpen(
            self._name, state=st.value, opened_at=opened_at, retry_at=retry_at, reason=reason
        )

    def _report(
        self, permit: BreakerPermit, exc: BaseException | None, duration: float | None
    ) -> None:
        """The outcome of a call that returned (``exc`` None) or raised ``exc``."""
        outcome = SUCCESS if exc is None else outcome_of(exc, self._config.count_unknown_errors)
        self._settle(permit, outcome, exc, duration)

    def _settle(
        self, permit: BreakerPermit, outcome: int, exc: BaseException | None, duration: float | None
    ) -> None:
        if type(permit) is not BreakerPermit or permit._handle is not self:
            raise _bad_permit(self, permit)
        probe = permit._probe
        if outcome == NEUTRAL:
            self._ignored += 1
            if probe:
                self._probes.pop(probe, None)
            return
        cfg = self._config
        if probe:  # a half-open probe; every transition clears the probes
            if self._probes.pop(probe, None) is None:
                self._ignored += 1  # its lease expired or the breaker moved on: stale
                return
            if outcome == SUCCESS:
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
        if permit is not self._permit or not (st is _CLOSED or st is _DISABLED):
            self._ignored += 1  # admitted before the breaker moved on: stale
            return
        slow = (
            duration is not None
            and cfg.slow_call_duration is not None
            and duration >= cfg.slow_call_duration
        )
        self._calls += 1
        if outcome == SUCCESS:
            self._consecutive = 0
        else:
            self._consecutive += 1
            self._window_failures += 1
        self._window.add(self._calls, self._clock(), outcome == FAILURE, slow)
        if st is _DISABLED:
            return
        if outcome == FAILURE:
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
        self._permit = BreakerPermit(self, 0)  # a new generation: older permits are stale
        self._closed_guard = _ClosedGuard(self, self._permit)
        self._open_until = until
        if to is _CLOSED:
            self._opened_at = None
        self._probes.clear()
        self._probe_successes = 0
        self._probe_limit_reported = False
        # Each state starts a fresh window: old evidence already had its say.
        self._consecutive = 0
        self._window.reset(self._calls)
        if self._listener is not None:
            self._listener(event)
        if self._wake is not None:
            self._wake()


def _bad_permit(handle: BreakerHandle, permit: object) -> Exception:
    if isinstance(permit, BreakerPermit):
        return ValueError(
            f"this permit was issued by breaker {permit._handle.name!r}, not {handle.name!r}"
        )
    hint = " (record_failure takes the permit first, then the exception)"
    return TypeError(
        "expected the BreakerPermit returned by check(), got "
        f"{type(permit).__name__}{hint if isinstance(permit, BaseException) else ''}"
    )


class _Guard:
    """Async context manager returned by :meth:`BreakerHandle.guard`."""

    __slots__ = ("_handle", "_permit", "_start")

    def __init__(self, handle: BreakerHandle) -> None:
        self._handle = handle
        self._start = 0.0

    async def __aenter__(self) -> None:
        h = self._handle
        self._permit = h.check()
        if h._config.slow_call_duration is not None:
            self._start = h._clock()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle._report(self._permit, exc, self._handle._since(self._start))


class _ClosedGuard:
    """What :meth:`BreakerHandle.guard` returns while closed (count window, no slow-call
    timing): one per generation, shared by its calls, since they all hold its one permit."""

    __slots__ = ("_handle", "_permit")

    def __init__(self, handle: BreakerHandle, permit: BreakerPermit) -> None:
        self._handle = handle
        self._permit = permit

    async def __aenter__(self) -> None:
        if self._permit is not self._handle._permit:
            raise RuntimeError("enter guard() where it is created: `async with handle.guard():`")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        h = self._handle
        if exc is None and self._permit is h._permit:  # still this closed generation
            h._consecutive = 0
            h._calls += 1
            return
        h._report(self._permit, exc, None)
