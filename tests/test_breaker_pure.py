"""The breaker as a pure state machine over an injected clock: no Trio run involved."""

from __future__ import annotations

import pytest

import rakka_trio as rk
from rakka_trio import BreakerState as S


def test_invalid_force_duration() -> None:
    h = rk.BreakerHandle("ep", clock=lambda: 0.0)
    with pytest.raises(ValueError, match="positive"):
        h.force_open(-1)


def test_pure_state_machine_with_injected_clock() -> None:
    """No Trio run needed: the handle is a pure state machine over an injected clock."""
    now = [0.0]
    h = rk.BreakerHandle(
        "ep", rk.BreakerConfig(failure_threshold=1, open_duration=5), clock=lambda: now[0]
    )
    h.record_failure(h.check())
    assert h.state is S.OPEN
    assert h.next_deadline() == 5.0
    now[0] = 5.0
    assert h.state is S.HALF_OPEN  # due: a read shows it, without applying it
    assert h.next_deadline() == 5.0
    h.poll()
    assert h.state is S.HALF_OPEN
    assert h.next_deadline() == float("inf")  # applied: no timer until a probe is admitted
