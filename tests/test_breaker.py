"""The breaker state machine, driven by virtual time (MockClock) only."""

from __future__ import annotations

import contextlib
import math

import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio import BreakerState as S

pytestmark = pytest.mark.trio


def make(events: list[rk.Transition] | None = None, **cfg: object) -> rk.BreakerHandle:
    """A handle whose transitions are collected into ``events``."""
    sink = events if events is not None else []

    def collect(event: rk.Event) -> None:
        if isinstance(event, rk.Transition):
            sink.append(event)

    return rk.BreakerHandle("ep", rk.BreakerConfig(**cfg), on_event=collect)  # type: ignore[arg-type]


def server_error(retry_after: float | None = None) -> rk.ServerError:
    return rk.ServerError("boom", status=503, retry_after=retry_after)


async def fail_with(exc: BaseException) -> None:
    raise exc


async def ok() -> str:
    return "ok"


def fail(h: rk.BreakerHandle, exc: BaseException | None = None) -> None:
    """One call that is admitted and fails with ``exc``."""
    h.record_failure(h.check(), exc if exc is not None else server_error())


def succeed(h: rk.BreakerHandle) -> None:
    """One call that is admitted and succeeds."""
    h.record_success(h.check())


async def test_consecutive_failures_trip(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(events, failure_threshold=3, failure_rate_threshold=None)
    fail(h)
    fail(h)
    assert h.state is S.CLOSED
    succeed(h)  # resets the consecutive count
    fail(h)
    fail(h)
    assert h.state is S.CLOSED
    fail(h)
    assert h.state is S.OPEN
    assert [(e.from_state, e.to_state, e.cause) for e in events] == [
        (S.CLOSED, S.OPEN, "failure_threshold")
    ]
    assert events[0].consecutive_failures == 3
    with pytest.raises(rk.CircuitOpen) as info:
        h.check()
    assert info.value.retry_at == pytest.approx(30.0)
    assert h.statistics().rejected == 1


async def test_failure_rate_trips_only_after_minimum_calls(
    mock_clock: trio.testing.MockClock,
) -> None:
    events: list[rk.Transition] = []
    h = make(
        events, failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=10, window_size=10
    )
    # Alternate: never 2 consecutive failures, but a 50% failure rate.
    for i in range(9):
        if i % 2:
            fail(h)
        else:
            succeed(h)
    assert h.state is S.CLOSED  # 9 calls < minimum_calls
    fail(h)  # 10 calls, 5 failures: 50%
    assert h.state is S.OPEN
    assert events[-1].cause == "failure_rate"
    assert events[-1].failure_rate == pytest.approx(0.5)


async def test_count_window_slides(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=4, window_size=4)
    fail(h)
    for _ in range(4):
        succeed(h)  # pushes the failure out of the 4-call window
    stats = h.statistics()
    assert (stats.calls_in_window, stats.failures_in_window) == (4, 0)
    fail(h)
    assert h.statistics().failure_rate == pytest.approx(0.25)
    assert h.state is S.CLOSED


async def test_time_window_forgets_old_failures(mock_clock: trio.testing.MockClock) -> None:
    h = make(
        failure_threshold=100,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window_type="time",
        window_duration=10.0,
    )
    for _ in range(3):
        fail(h)
    await trio.sleep(11)  # those failures leave the window
    for _ in range(3):
        succeed(h)
    fail(h)
    stats = h.statistics()
    assert stats.calls_in_window == 4
    assert stats.failures_in_window == 1
    assert h.state is S.CLOSED


async def test_slow_calls_trip(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(
        events,
        minimum_calls=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=1.0,
    )

    async def slow() -> None:
        await trio.sleep(2)

    await h.call(slow)
    assert h.state is S.CLOSED
    await h.call(slow)
    assert h.state is S.OPEN
    assert events[-1].cause == "slow_call_rate"


async def test_open_to_half_open_to_closed(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(events, failure_threshold=1, open_duration=10.0)
    fail(h)
    await trio.sleep(9.9)
    with pytest.raises(rk.CircuitOpen):
        h.check()
    await trio.sleep(0.1)
    assert await h.call(ok) == "ok"  # the probe
    assert [(e.to_state, e.cause) for e in events] == [
        (S.OPEN, "failure_threshold"),
        (S.HALF_OPEN, "timer"),
        (S.CLOSED, "probe_succeeded"),
    ]
    assert events[1].at == pytest.approx(10.0)


async def test_half_open_admits_bounded_probes(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1, open_duration=1.0, half_open_max_probes=2, success_threshold=2)
    fail(h)
    await trio.sleep(1)
    first = h.check()
    second = h.check()
    assert first.is_probe and second.is_probe
    with pytest.raises(rk.CircuitOpen) as info:
        h.check()
    assert info.value.state == "half_open"
    assert h.statistics().probes_in_flight == 2
    h.record_success(first)
    assert h.state is S.HALF_OPEN  # one success < success_threshold
    third = h.check()  # the returned permit can be taken again
    h.record_success(third)
    assert h.state is S.CLOSED
    h.record_success(second)  # the breaker moved on: stale, ignored
    assert h.statistics().ignored == 1


async def test_probe_failure_reopens_with_growing_duration(
    mock_clock: trio.testing.MockClock,
) -> None:
    events: list[rk.Transition] = []
    h = make(
        events,
        failure_threshold=1,
        open_duration=10.0,
        open_duration_max=25.0,
        open_duration_multiplier=2.0,
    )
    fail(h)
    assert events[-1].open_until == pytest.approx(10.0)
    await trio.sleep(10)
    with pytest.raises(rk.ServerError):
        await h.call(fail_with, server_error())
    assert h.state is S.OPEN
    assert events[-1].cause == "probe_failed"
    assert events[-1].open_until == pytest.approx(10 + 20)
    await trio.sleep(20)
    fail(h)
    assert events[-1].open_until == pytest.approx(30 + 25)  # capped at open_duration_max
    await trio.sleep(25)
    await h.call(ok)
    assert h.state is S.CLOSED
    fail(h)  # growth was reset by the recovery
    assert events[-1].open_until == pytest.approx(55 + 10)


async def test_retry_after_lengthens_open_duration(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(events, failure_threshold=1, open_duration=5.0, open_duration_max=60.0)
    fail(h, server_error(retry_after=40.0))
    assert events[-1].open_until == pytest.approx(40.0)
    h.reset()
    fail(h, server_error(retry_after=1000.0))
    assert events[-1].open_until == pytest.approx(60.0)  # capped


async def test_non_counting_errors_never_trip(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1)
    for exc in (
        rk.RateLimited("slow down", status=429),
        rk.BadRequest("bad", status=400),
        rk.ContentFiltered("no", reason="safety"),
        rk.QuotaExhausted("empty", status=429),
        rk.CircuitOpen("other", state="open", opened_at=0, retry_at=1),
    ):
        with pytest.raises(type(exc)):
            await h.call(fail_with, exc)
    assert h.state is S.CLOSED
    assert h.statistics().failures == 0
    assert h.statistics().ignored == 5


async def test_cancellation_never_counts_and_returns_probe_permit(
    mock_clock: trio.testing.MockClock,
) -> None:
    h = make(failure_threshold=1, open_duration=1.0)
    # Closed: cancelled calls change no count.
    with trio.move_on_after(1):
        await h.call(trio.sleep_forever)
    assert h.state is S.CLOSED
    assert h.statistics().failures == 0
    fail(h)
    await trio.sleep(1)
    # Half-open: a cancelled probe gives its permit back at once.
    with trio.move_on_after(1):
        async with h.guard():
            await trio.sleep_forever()
    assert h.state is S.HALF_OPEN
    assert h.statistics().probes_in_flight == 0
    h.check()  # the permit is available again


async def test_cancelled_propagates_untouched(mock_clock: trio.testing.MockClock) -> None:
    h = make()
    with trio.CancelScope() as scope:
        scope.cancel()
        await h.call(trio.sleep, 1)  # Cancelled must pass through call() to this scope
    assert scope.cancelled_caught
    assert h.statistics().failures == 0
    assert h.statistics().ignored == 1


async def test_probe_that_never_reports_loses_permit(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1, open_duration=1.0, probe_timeout=5.0)
    fail(h)
    await trio.sleep(1)
    h.check()  # a probe that never reports
    with pytest.raises(rk.CircuitOpen):
        h.check()
    await trio.sleep(5)
    h.check()  # the lease expired; a new probe is admitted
    assert h.statistics().probe_permits_expired == 1


async def test_stale_outcomes_do_not_move_the_breaker(mock_clock: trio.testing.MockClock) -> None:
    """A call admitted before a trip that fails after recovery can't re-open the breaker."""
    h = make(failure_threshold=1, open_duration=1.0)
    release = trio.Event()

    async def slow_failure() -> None:
        await release.wait()
        raise server_error()

    async with trio.open_nursery() as nursery:

        async def straggler() -> None:
            with pytest.raises(rk.ServerError):
                await h.call(slow_failure)

        nursery.start_soon(straggler)
        await trio.testing.wait_all_tasks_blocked()
        fail(h)  # trips
        await trio.sleep(1)
        await h.call(ok)  # probe closes it
        assert h.state is S.CLOSED
        release.set()
    assert h.state is S.CLOSED


async def test_forced_open_until_expiry_then_half_open(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(events)
    before = h.check()
    h.force_open(30.0, reason="incident-42", actor="alice")
    with pytest.raises(rk.CircuitOpen) as info:
        h.check()
    assert info.value.reason == "incident-42"
    assert info.value.retry_at == pytest.approx(30.0)
    h.record_success(before)  # outcomes can't end a forced state
    assert h.state is S.FORCED_OPEN
    await trio.sleep(30)
    assert h.state is S.HALF_OPEN  # due: reads show it at once...
    h.poll()  # ...and the timer transition is published when it is applied
    assert [(e.to_state, e.cause, e.actor) for e in events] == [
        (S.FORCED_OPEN, "forced", "alice"),
        (S.HALF_OPEN, "timer", None),
    ]


async def test_forced_open_without_duration_needs_reset(mock_clock: trio.testing.MockClock) -> None:
    h = make()
    h.force_open(reason="until further notice")
    with pytest.raises(rk.CircuitOpen) as info:
        h.check()
    assert math.isinf(info.value.retry_at)
    assert h.next_deadline() == math.inf
    await trio.sleep(10_000)
    assert h.state is S.FORCED_OPEN
    h.reset(reason="fixed")
    assert h.state is S.CLOSED
    h.check()


async def test_disabled_passes_and_counts(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1)
    h.disable(10.0, reason="breaker misbehaving")
    for _ in range(5):
        fail(h)
    stats = h.statistics()
    assert stats.state is S.DISABLED
    assert stats.failures == 5
    await trio.sleep(10)
    assert h.state is S.CLOSED


async def test_reset_clears_counts(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=3)
    fail(h)
    fail(h)
    h.reset()
    fail(h)
    fail(h)
    assert h.state is S.CLOSED


async def test_guard_records_outcomes(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=2)
    async with h.guard():
        pass
    for _ in range(2):
        with pytest.raises(rk.ServerError):
            async with h.guard():
                raise server_error()
    assert h.state is S.OPEN
    with pytest.raises(rk.CircuitOpen):
        async with h.guard():
            raise AssertionError("the body must not run")  # pragma: no cover
    stats = h.statistics()
    assert (stats.successes, stats.failures, stats.rejected) == (1, 2, 1)


async def test_unknown_errors_count_unless_configured(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1)
    with pytest.raises(OSError):
        await h.call(fail_with, OSError("connection reset"))
    assert h.state is S.OPEN
    quiet = make(failure_threshold=1, count_unknown_errors=False)
    with pytest.raises(OSError):
        await quiet.call(fail_with, OSError("connection reset"))
    assert quiet.state is S.CLOSED


async def test_a_late_outcome_from_before_a_trip_is_not_charged_to_the_probe(
    mock_clock: trio.testing.MockClock,
) -> None:
    """check() while closed -> trip -> timer -> a probe is admitted -> the first call reports
    late: its failure belongs to a closed period that is over and must not re-open the
    breaker nor use up the probe."""
    events: list[rk.Transition] = []
    h = make(events, failure_threshold=1, open_duration=5.0)
    early = h.check()  # a call admitted while closed, still running
    fail(h)  # another call trips the breaker
    await trio.sleep(5)
    probe = h.check()
    assert probe.is_probe and not early.is_probe
    h.record_failure(early, server_error())  # the early call fails now
    assert h.state is S.HALF_OPEN
    stats = h.statistics()
    assert (stats.probes_in_flight, stats.ignored, stats.trips) == (1, 1, 1)
    h.record_success(probe)
    assert h.state is S.CLOSED
    assert [e.cause for e in events] == ["failure_threshold", "timer", "probe_succeeded"]
    h.record_failure(early, server_error())  # nor can it move the recovered breaker
    assert h.statistics().consecutive_failures == 0


async def test_a_probe_permit_counts_once(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1, open_duration=1.0, half_open_max_probes=2, success_threshold=2)
    fail(h)
    await trio.sleep(1)
    probe = h.check()
    h.record_success(probe)
    h.record_success(probe)  # reported twice: the second report is stale
    assert h.state is S.HALF_OPEN
    assert h.statistics().ignored == 1
    released = h.check()
    h.release(released)  # abandoned: no outcome, the permit comes back
    assert h.statistics().probes_in_flight == 0
    assert h.state is S.HALF_OPEN
    h.record_failure(released, server_error())  # already released: stale
    assert h.state is S.HALF_OPEN


async def test_the_old_call_shape_is_a_clear_error(mock_clock: trio.testing.MockClock) -> None:
    h = make(failure_threshold=1)
    with pytest.raises(TypeError, match="permit first"):
        h.record_failure(server_error())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="permit"):
        h.record_success()  # type: ignore[call-arg]
    other = make()
    with pytest.raises(ValueError, match="issued by breaker"):
        h.record_failure(other.check(), server_error())
    assert h.state is S.CLOSED and h.statistics().failures == 0


async def test_reads_never_change_state_or_publish(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Transition] = []
    h = make(events, failure_threshold=1, open_duration=5.0)
    fail(h)
    await trio.sleep(6)  # the timer is due; no breaker task applies it here
    for _ in range(3):
        assert h.state is S.HALF_OPEN  # what a call would meet now
        stats = h.statistics()
        assert (stats.state, stats.open_until, stats.probes_in_flight) == (S.HALF_OPEN, None, 0)
        assert "half_open" in repr(h)
    assert [e.to_state for e in events] == [S.OPEN]  # nothing published by reading
    h.poll()  # applying it publishes the transition, once
    h.poll()
    assert [(e.to_state, e.cause) for e in events] == [
        (S.OPEN, "failure_threshold"),
        (S.HALF_OPEN, "timer"),
    ]
    h.disable(2.0)
    await trio.sleep(2)
    assert h.state is S.CLOSED and h.statistics().state is S.CLOSED
    assert events[-1].to_state is S.DISABLED
    h.check()  # the next admission applies the due transition
    assert (events[-1].to_state, events[-1].cause) == (S.CLOSED, "timer")


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5])
async def test_half_open_admits_exactly_its_probe_limit(
    mock_clock: trio.testing.MockClock, limit: int
) -> None:
    h = make(
        failure_threshold=1, open_duration=1.0, half_open_max_probes=limit, success_threshold=9
    )
    fail(h)
    await trio.sleep(1)
    admitted: list[rk.BreakerPermit] = []
    for _ in range(limit + 3):
        with contextlib.suppress(rk.CircuitOpen):
            admitted.append(h.check())
    assert len(admitted) == limit
    h.release(admitted.pop())  # one comes back: exactly one more gets in
    admitted.append(h.check())
    with pytest.raises(rk.CircuitOpen):
        h.check()
    h.record_success(admitted.pop())
    admitted.append(h.check())
    with pytest.raises(rk.CircuitOpen):
        h.check()


async def test_timeouts_are_builtin_timeouts_and_local_ones_never_count(
    mock_clock: trio.testing.MockClock,
) -> None:
    provider_side = rk.Timeout("no bytes", phase="read_gap", provider="openai", endpoint="ep")
    local = rk.DeadlineExceeded("call took too long", phase="total", endpoint="ep")
    assert isinstance(provider_side, TimeoutError) and isinstance(local, TimeoutError)
    assert isinstance(provider_side, rk.ProviderError)
    assert not isinstance(local, rk.ProviderError)  # our own limit: not the provider's doing
    assert isinstance(local, rk.RakkaError)
    assert (local.phase, local.endpoint, str(local)) == ("total", "ep", "ep: call took too long")
    h = make(failure_threshold=1)
    fail(h, local)
    assert h.state is S.CLOSED and h.statistics().ignored == 1
    fail(h, provider_side)
    assert h.state is S.OPEN


async def test_guards_of_concurrent_calls_each_count_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    h = make(failure_threshold=3)
    results: list[str] = []

    async def one(i: int) -> None:
        with contextlib.suppress(rk.ServerError):
            async with h.guard():
                await trio.sleep(1 + i % 3)
                if i % 2:
                    raise server_error()
                results.append("ok")

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    stats = h.statistics()
    assert (stats.successes, stats.failures, stats.state) == (2, 2, S.CLOSED)
    stale = h.guard()
    fail(h)
    fail(h)
    fail(h)  # trips: the guard above belongs to a closed period that is over
    with pytest.raises(RuntimeError, match="where it is created"):
        async with stale:
            pass  # pragma: no cover
    h.reset()
    again = h.guard()
    for _ in range(2):  # within one closed period a guard may be entered again
        async with again:
            pass
    assert h.statistics().successes == 4
