"""Hypothesis state-machine tests of the breaker's invariants under arbitrary interleavings.

Calls are modelled with the public permit API (``check`` / ``record_*`` / ``release``), so many
calls can be in flight at once across every state. The probe limit is checked against a count
the model keeps itself — which probes were admitted, in which half-open period, which have
reported and which leases ran out — never against the breaker's own bookkeeping, and with every
limit from 1 to 5.
"""

from __future__ import annotations

import itertools
import math

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import rakka_trio as rk
from rakka_trio import BreakerState as S

OUTCOMES = st.sampled_from(
    ["success", "server_error", "bad_request", "cancelled", "interrupt", "released"]
)
PROBE_TIMEOUT = 25.0


def exception_for(kind: str) -> BaseException | None:
    if kind == "success":
        return None
    if kind == "server_error":
        return rk.ServerError("boom", status=503)
    if kind == "bad_request":
        return rk.BadRequest("bad", status=400)
    if kind == "cancelled":
        return trio.Cancelled._create()
    return KeyboardInterrupt()


class Call:
    """One admitted call as the model sees it."""

    def __init__(self, permit: rk.BreakerPermit, probe: bool, period: int, at: float) -> None:
        self.permit = permit
        self.probe = probe  # admitted while the breaker was half-open
        self.period = period  # how many transitions had happened when it was admitted
        self.lease_end = at + PROBE_TIMEOUT


class BreakerMachine(RuleBasedStateMachine):
    """Random admissions (singly and in bursts), outcomes, clock jumps and operator commands."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.in_flight: list[Call] = []
        self.forced_until: float | None = None  # model of an operator-forced state
        self.events: list[rk.Event] = []
        self.max_probes = 1
        self.h = rk.BreakerHandle("ep", rk.BreakerConfig(), clock=lambda: self.now)

    @initialize(
        threshold=st.integers(1, 4),
        probes=st.sampled_from([1, 2, 3, 4, 5]),
        successes=st.integers(1, 3),
        rate=st.one_of(st.none(), st.floats(0.2, 1.0)),
        half_open=st.booleans(),
    )
    def configure(
        self, threshold: int, probes: int, successes: int, rate: float | None, half_open: bool
    ) -> None:
        self.max_probes = probes
        cfg = rk.BreakerConfig(
            failure_threshold=threshold,
            failure_rate_threshold=rate,
            minimum_calls=3,
            window_size=5,
            open_duration=10.0,
            open_duration_max=40.0,
            half_open_max_probes=probes,
            success_threshold=successes,
            probe_timeout=PROBE_TIMEOUT,
        )
        self.h = rk.BreakerHandle("ep", cfg, clock=lambda: self.now, on_event=self.events.append)
        if half_open:  # start where the probe limit matters: a crowd meets a half-open breaker
            self.storm()
            self.advance(10.0)
            assert self.h.state is S.HALF_OPEN
            self.admit_until_refused()

    # --- the model's own count --------------------------------------------------------------

    def period(self) -> int:
        return sum(1 for e in self.events if isinstance(e, rk.Transition))

    def live_probes(self) -> int:
        """Probes admitted in the current half-open period that have neither reported nor
        outlived their lease: what the probe limit bounds."""
        period = self.period()
        return sum(
            1 for c in self.in_flight if c.probe and c.period == period and self.now < c.lease_end
        )

    # --- rules ------------------------------------------------------------------------------

    def admit_one(self) -> None:
        state_before = self.h.state
        probes_before = self.live_probes() if state_before is S.HALF_OPEN else 0
        try:
            permit = self.h.check()
        except rk.CircuitOpen:
            assert state_before is not S.CLOSED and state_before is not S.DISABLED
            if state_before is S.HALF_OPEN:  # refused only when every probe permit is taken
                assert probes_before == self.max_probes
            return
        probe = state_before is S.HALF_OPEN
        assert permit.is_probe is probe
        if probe:
            assert probes_before < self.max_probes  # admitted only below the limit
        self.in_flight.append(Call(permit, probe, self.period(), self.now))

    @rule()
    def admit(self) -> None:
        self.admit_one()

    @rule(n=st.integers(2, 7))
    def admit_burst(self, n: int) -> None:
        for _ in range(n):  # concurrent arrivals: no outcome in between
            self.admit_one()

    @rule()
    def admit_until_refused(self) -> None:
        """A crowd arrives: admissions until one is refused (or clearly too many got in), which
        probes the exact limit whenever the breaker is half-open."""
        for _ in range(self.max_probes + 2):
            admitted = len(self.in_flight)
            self.admit_one()
            if len(self.in_flight) == admitted:
                return

    @rule()
    def storm(self) -> None:
        """Failures until the breaker opens (from CLOSED; bounded)."""
        for _ in range(8):
            if self.h.state is not S.CLOSED:
                return
            self.h.record_failure(self.h.check(), rk.ServerError("storm", status=503))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 50), kind=OUTCOMES)
    def finish(self, index: int, kind: str) -> None:
        call = self.in_flight.pop(index % len(self.in_flight))
        before = self.h.statistics()
        stale = call.period != self.period()  # the breaker moved on since it was admitted
        if kind == "released":
            self.h.release(call.permit)
        elif kind == "success":
            self.h.record_success(call.permit)
        else:
            self.h.record_failure(call.permit, exception_for(kind))
        after = self.h.statistics()
        if stale or kind in ("cancelled", "interrupt", "bad_request", "released"):
            # Never counts: nothing but the ignored total (and a returned permit) changes.
            assert after.state is before.state
            assert after.successes == before.successes
            assert after.failures == before.failures
            assert after.consecutive_failures == before.consecutive_failures
            assert after.trips == before.trips
            assert after.ignored == before.ignored + 1
        if before.state is S.FORCED_OPEN:
            assert after.state is S.FORCED_OPEN  # outcomes never end a forced state

    @rule(dt=st.sampled_from([0.5, 5.0, 10.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        transitions_before = self.period()
        effective = self.h.state  # what a call meets now, due timers included...
        assert self.h.statistics().state is effective
        assert self.period() == transitions_before  # ...and reading published nothing
        self.h.poll()
        assert self.h.state is effective
        if self.forced_until is not None and effective is not S.FORCED_OPEN:
            assert self.now >= self.forced_until
            self.forced_until = None

    @rule(duration=st.one_of(st.none(), st.sampled_from([1.0, 20.0])))
    def force_open(self, duration: float | None) -> None:
        self.h.force_open(duration, reason="drill")
        self.forced_until = math.inf if duration is None else self.now + duration

    @rule()
    def reset(self) -> None:
        self.h.reset()
        self.forced_until = None

    @rule(duration=st.one_of(st.none(), st.just(5.0)))
    def disable(self, duration: float | None) -> None:
        self.h.disable(duration)
        self.forced_until = None

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def probes_bounded(self) -> None:
        assert self.live_probes() <= self.max_probes

    @invariant()
    def forced_state_holds_until_expiry_or_reset(self) -> None:
        if self.forced_until is not None and self.now < self.forced_until:
            assert self.h.state is S.FORCED_OPEN

    @invariant()
    def transitions_chain(self) -> None:
        transitions = [e for e in self.events if isinstance(e, rk.Transition)]
        for prev, nxt in itertools.pairwise(transitions):
            assert prev.to_state is nxt.from_state

    @invariant()
    def open_means_fail_fast(self) -> None:
        stats = self.h.statistics()
        if stats.state is S.OPEN or stats.state is S.FORCED_OPEN:
            assert stats.open_until is not None and self.now < stats.open_until
            try:
                self.h.check()
            except rk.CircuitOpen as exc:
                assert exc.retry_at == stats.open_until
            else:
                raise AssertionError("an open breaker admitted a call before its deadline")


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestBreakerInvariants = BreakerMachine.TestCase
