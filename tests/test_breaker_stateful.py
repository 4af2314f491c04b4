"""Hypothesis state-machine tests of the breaker's invariants under arbitrary interleavings.

Concurrent calls are modelled with the handle's admission tokens (what ``call``/``guard`` use
internally), so many calls can be in flight at once across every state.
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

OUTCOMES = st.sampled_from(["success", "server_error", "bad_request", "cancelled", "interrupt"])


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


class BreakerMachine(RuleBasedStateMachine):
    """Random admissions, outcomes, clock jumps and operator commands."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.in_flight: list[int] = []
        self.forced_until: float | None = None  # model of an operator-forced state
        self.events: list[rk.Event] = []
        self.max_probes = 1
        self.h = rk.BreakerHandle("ep", rk.BreakerConfig(), clock=lambda: self.now)

    @initialize(
        threshold=st.integers(1, 4),
        probes=st.integers(1, 3),
        successes=st.integers(1, 3),
        rate=st.one_of(st.none(), st.floats(0.2, 1.0)),
    )
    def configure(self, threshold: int, probes: int, successes: int, rate: float | None) -> None:
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
            probe_timeout=25.0,
        )
        self.h = rk.BreakerHandle("ep", cfg, clock=lambda: self.now, on_event=self.events.append)

    @rule()
    def admit(self) -> None:
        state_before = self.h.state
        try:
            token = self.h._acquire()
        except rk.CircuitOpen:
            assert state_before is not S.CLOSED and state_before is not S.DISABLED
            return
        self.in_flight.append(token)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 50), kind=OUTCOMES)
    def finish(self, index: int, kind: str) -> None:
        token = self.in_flight.pop(index % len(self.in_flight))
        before = self.h.statistics()
        exc = exception_for(kind)
        self.h._finish(token, exc, None)
        after = self.h.statistics()
        if kind in ("cancelled", "interrupt", "bad_request"):
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
        state_before = self.h._state
        self.h.poll()
        if state_before is S.FORCED_OPEN and self.h._state is not S.FORCED_OPEN:
            assert self.forced_until is not None and self.now >= self.forced_until
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

    @invariant()
    def probes_bounded(self) -> None:
        assert self.h.statistics().probes_in_flight <= self.max_probes

    @invariant()
    def forced_state_holds_until_expiry_or_reset(self) -> None:
        if self.forced_until is not None and self.now < self.forced_until:
            assert self.h._state is S.FORCED_OPEN

    @invariant()
    def transitions_chain(self) -> None:
        transitions = [e for e in self.events if isinstance(e, rk.Transition)]
        for prev, nxt in itertools.pairwise(transitions):
            assert prev.to_state is nxt.from_state

    @invariant()
    def open_means_fail_fast(self) -> None:
        h = self.h
        if h._state is S.OPEN or h._state is S.FORCED_OPEN:
            assert h._open_until is not None
            if self.now < h._open_until:
                try:
                    h._acquire()
                except rk.CircuitOpen as exc:
                    assert exc.retry_at == h._open_until
                else:
                    raise AssertionError("an open breaker admitted a call before its deadline")


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestBreakerInvariants = BreakerMachine.TestCase
