"""Supervisor: breaker tasks, timed events, runtime endpoints, restarts, fan-out, shutdown.

Every test runs on virtual time (MockClock) inside a ``trio.fail_after`` budget of virtual
seconds, so a regression that waits forever fails instead of hanging the run.
"""

from __future__ import annotations

import math

import httpx
import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio import BreakerState as S

pytestmark = pytest.mark.trio


def endpoint(name: str = "primary", **breaker: object) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        breaker=rk.BreakerConfig(**breaker),  # type: ignore[arg-type]
    )


def config(*endpoints: rk.EndpointConfig, **kw: object) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(endpoints=list(endpoints) or [endpoint()], **kw)  # type: ignore[arg-type]


def fail(h: rk.BreakerHandle, exc: BaseException | None = None) -> None:
    """One admitted call that fails (a 503 unless ``exc`` says otherwise)."""
    h.record_failure(h.check(), exc if exc is not None else rk.ServerError("x", status=503))


async def next_of(events: rk.Subscription, kind: type[rk.Event]) -> rk.Event:
    """The next event of ``kind`` (other kinds are skipped)."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"stream ended before a {kind.__name__}")


def drain(events: rk.Subscription) -> list[rk.Event]:
    """Every event already queued."""
    got: list[rk.Event] = []
    while True:
        try:
            got.append(events.receive_nowait())
        except trio.WouldBlock:
            return got


async def test_lifecycle_is_visible_as_events_when_it_happens(
    mock_clock: trio.testing.MockClock,
) -> None:
    cfg = config(endpoint(failure_threshold=2, open_duration=10.0, half_open_max_probes=1))
    with trio.fail_after(1000):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            h = sup.breaker("primary")
            fail(h)
            fail(h)
            trip = await next_of(events, rk.Transition)
            assert isinstance(trip, rk.Transition)
            assert (trip.to_state, trip.cause, trip.at) == (S.OPEN, "failure_threshold", 0.0)

            # Nobody looks at the breaker: the breaker task emits OPEN -> HALF_OPEN at t=10.
            half = await next_of(events, rk.Transition)
            assert isinstance(half, rk.Transition)
            assert (half.to_state, half.cause) == (S.HALF_OPEN, "timer")
            assert half.at == pytest.approx(10.0)
            assert trio.current_time() == pytest.approx(10.0)

            probe = h.check()  # the single probe
            with pytest.raises(rk.CircuitOpen):
                h.check()
            limit = await next_of(events, rk.ProbeLimitReached)
            assert isinstance(limit, rk.ProbeLimitReached)
            assert limit.probes_in_flight == 1

            h.record_success(probe)
            closed = await next_of(events, rk.Transition)
            assert isinstance(closed, rk.Transition)
            assert (closed.to_state, closed.cause) == (S.CLOSED, "probe_succeeded")

            sup.force_open("primary", duration=300.0, reason="incident-42", actor="alice")
            audit = await next_of(events, rk.Command)
            assert isinstance(audit, rk.Command)
            assert (audit.command, audit.actor, audit.reason) == (
                "force_open",
                "alice",
                "incident-42",
            )
            forced = await next_of(events, rk.Transition)
            assert isinstance(forced, rk.Transition)
            assert (forced.to_state, forced.cause) == (S.FORCED_OPEN, "forced")
            assert forced.open_until == pytest.approx(310.0)

            expired = await next_of(events, rk.Transition)
            assert isinstance(expired, rk.Transition)
            assert (expired.from_state, expired.to_state, expired.cause) == (
                S.FORCED_OPEN,
                S.HALF_OPEN,
                "timer",
            )
            assert expired.at == pytest.approx(310.0)

            sup.reset("primary", reason="all clear")
            reset = await next_of(events, rk.Transition)
            assert isinstance(reset, rk.Transition)
            assert (reset.to_state, reset.cause, reset.reason) == (S.CLOSED, "reset", "all clear")


async def test_reading_state_never_publishes_the_due_transition(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A timer that is due is published by the breaker task, not by whoever reads."""
    cfg = config(endpoint(failure_threshold=1, open_duration=10.0))
    with trio.fail_after(100):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            h = sup.breaker("primary")
            fail(h)
            await trio.testing.wait_all_tasks_blocked()
            assert [type(e) for e in drain(events)] == [rk.Transition]  # the trip
            mock_clock.jump(10.0)  # due now, and no task has run since
            assert h.state is S.HALF_OPEN
            assert "half_open" in repr(sup.endpoint("primary"))
            stats = sup.statistics().endpoints["primary"].breaker
            assert (stats.state, stats.open_until) == (S.HALF_OPEN, None)
            assert drain(events) == []  # reading published nothing...
            half = await next_of(events, rk.Transition)  # ...the breaker task does
            assert isinstance(half, rk.Transition)
            assert (half.to_state, half.cause, half.at) == (S.HALF_OPEN, "timer", 10.0)
            await trio.testing.wait_all_tasks_blocked()
            assert drain(events) == []  # exactly once


async def test_forced_open_without_duration_stays_until_reset(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(7200):
        async with rk.open_supervisor(config()) as sup:
            sup.force_open("primary", reason="drill")
            await trio.sleep(3600)
            assert sup.breaker("primary").state is S.FORCED_OPEN
            stats = sup.statistics().endpoints["primary"].breaker
            assert math.isinf(stats.open_until or 0.0)
            assert stats.forced_reason == "drill"
            sup.reset("primary")
            assert sup.breaker("primary").state is S.CLOSED


async def test_disable_bypasses_then_expires(mock_clock: trio.testing.MockClock) -> None:
    cfg = config(endpoint(failure_threshold=1))
    with trio.fail_after(600):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            sup.disable("primary", duration=60.0, reason="false alarms")
            h = sup.breaker("primary")
            fail(h, rk.ServerError("x", status=500))
            h.check()
            await next_of(events, rk.Transition)  # -> DISABLED
            back = await next_of(events, rk.Transition)
            assert isinstance(back, rk.Transition)
            assert (back.to_state, back.cause, back.at) == (S.CLOSED, "timer", 60.0)


async def test_unknown_endpoint(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(config()) as sup:
            with pytest.raises(rk.UnknownEndpoint, match="nope"):
                sup.force_open("nope", 1.0)
            with pytest.raises(rk.UnknownEndpoint):
                sup.breaker("nope")
            with pytest.raises(KeyError):  # also a KeyError, as a mapping lookup would be
                sup.endpoint("nope")


async def test_add_and_remove_endpoints_at_runtime(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with (
            rk.open_supervisor(config()) as sup,
            sup.open_subscription(stats=False) as events,
        ):
            tasks_before = len(sup._nursery.child_tasks)
            ep = sup.add_endpoint(endpoint("backup", failure_threshold=1, open_duration=5.0))
            assert isinstance(await next_of(events, rk.EndpointAdded), rk.EndpointAdded)
            assert ep.name == "backup"
            assert sup.endpoint_names == ["primary", "backup"]
            await trio.testing.wait_all_tasks_blocked()
            assert len(sup._nursery.child_tasks) == tasks_before + 1
            with pytest.raises(rk.ConfigError, match="already exists"):
                sup.add_endpoint(endpoint("backup"))

            # The new endpoint's breaker task emits its timer transition.
            fail(ep.breaker, rk.Timeout(phase="connect"))
            await next_of(events, rk.Transition)
            half = await next_of(events, rk.Transition)
            assert isinstance(half, rk.Transition)
            assert (half.endpoint, half.to_state, half.at) == ("backup", S.HALF_OPEN, 5.0)

            sup.remove_endpoint("backup")
            removed = await next_of(events, rk.EndpointRemoved)
            assert isinstance(removed, rk.EndpointRemoved)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sup._nursery.child_tasks) == tasks_before  # its task is gone
            assert "backup" not in sup.statistics().endpoints
            with pytest.raises(rk.UnknownEndpoint):
                sup.remove_endpoint("backup")


async def test_crashing_task_restarts_with_backoff_then_fails_supervisor(
    mock_clock: trio.testing.MockClock,
) -> None:
    cfg = config(
        restart_intensity=3, restart_period=60.0, restart_backoff=1.0, restart_backoff_max=3.0
    )
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        raise ValueError("kaboom")

    restarts: list[rk.TaskRestarted] = []
    with trio.fail_after(100), pytest.raises(rk.SupervisorError, match="crashed 4 times") as info:
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            sup.start_task("flaky", flaky)
            async for event in events:
                if isinstance(event, rk.TaskRestarted):
                    restarts.append(event)
    assert isinstance(info.value.__cause__, ValueError)
    # Backoff doubles, capped at restart_backoff_max: starts at 0, 1, 3, 6.
    assert starts == [0.0, 1.0, 3.0, 6.0]
    assert [r.backoff for r in restarts] == [1.0, 2.0, 3.0]
    assert all("kaboom" in r.error for r in restarts)


async def test_restarts_spread_over_time_are_tolerated(mock_clock: trio.testing.MockClock) -> None:
    cfg = config(restart_intensity=1, restart_period=10.0, restart_backoff=0.0)
    runs = 0

    async def crash_every_30s() -> None:
        nonlocal runs
        runs += 1
        if runs == 5:
            return  # a normal return ends the task for good
        await trio.sleep(30)
        raise RuntimeError("periodic failure")

    with trio.fail_after(1000):
        async with rk.open_supervisor(cfg) as sup:
            sup.start_task("periodic", crash_every_30s)
            await trio.sleep(200)
            assert runs == 5
            assert sup.statistics().task_restarts == 4


async def test_keyboard_interrupt_is_never_restarted(mock_clock: trio.testing.MockClock) -> None:
    runs = 0

    async def interrupted() -> None:
        nonlocal runs
        runs += 1
        raise KeyboardInterrupt

    with trio.fail_after(100), pytest.raises(KeyboardInterrupt):
        async with rk.open_supervisor(config()) as sup:
            sup.start_task("interrupted", interrupted)
            await trio.sleep_forever()
    assert runs == 1


async def test_breaker_task_restart_keeps_handle_state(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(endpoint(failure_threshold=1, open_duration=10.0), restart_backoff=0.5)
    real_poll = rk.BreakerHandle.poll
    crashed = False

    def poll_crashing_once(self: rk.BreakerHandle) -> None:
        nonlocal crashed
        if not crashed and self.state is S.OPEN:
            crashed = True
            raise RuntimeError("bug in poll")
        real_poll(self)

    with trio.fail_after(100):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            monkeypatch.setattr(rk.BreakerHandle, "poll", poll_crashing_once)
            fail(sup.breaker("primary"), rk.ServerError("x", status=502))
            restarted = await next_of(events, rk.TaskRestarted)
            assert isinstance(restarted, rk.TaskRestarted)
            assert restarted.task == "breaker:primary"
            # State survived the crash, and the restarted task still fires the timer on time.
            assert sup.breaker("primary").state is S.OPEN
            half = await next_of(events, rk.Transition)
            while isinstance(half, rk.Transition) and half.to_state is not S.HALF_OPEN:
                half = await next_of(events, rk.Transition)
            assert isinstance(half, rk.Transition)
            assert half.at == pytest.approx(10.0)


async def test_slow_subscriber_lags_and_never_blocks(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with (
            rk.open_supervisor(config()) as sup,
            sup.open_subscription(buffer=4, stats=False) as slow,
            sup.open_subscription(buffer=10_000, stats=False) as fast,
        ):
            h = sup.breaker("primary")
            for i in range(50):  # 100 transitions; the slow subscriber never reads meanwhile
                sup.force_open("primary", 10.0, reason=f"r{i}")
                sup.reset("primary")
            assert h.state is S.CLOSED
            first = slow.receive_nowait()
            assert isinstance(first, rk.Lagged)
            assert first.dropped == 200 - 4  # 100 audits + 100 transitions, 4 kept
            kept = [slow.receive_nowait() for _ in range(4)]
            assert isinstance(kept[-1], rk.Transition) and kept[-1].to_state is S.CLOSED
            with pytest.raises(trio.WouldBlock):
                slow.receive_nowait()
            assert slow.dropped == 196
            assert len(drain(fast)) == 200


async def test_a_subscription_lives_exactly_as_long_as_its_block(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with rk.open_supervisor(config()) as sup:
            unopened = sup.open_subscription()
            sup.force_open("primary", 1.0)
            assert sup.statistics().subscribers == 0  # not entered: nothing registered
            with pytest.raises(RuntimeError, match="boom"):
                async with sup.open_subscription(stats=False) as events:
                    assert sup.statistics().subscribers == 1
                    raise RuntimeError("boom")
            assert sup.statistics().subscribers == 0  # an error exit unsubscribes too
            with pytest.raises(trio.ClosedResourceError):
                events.receive_nowait()
            async with unopened as late:  # registration happens on entry
                sup.reset("primary")
                assert [type(e) for e in drain(late)] == [rk.Command, rk.Transition]
            with pytest.raises(RuntimeError, match="already entered"):
                async with unopened:
                    pass  # pragma: no cover
            with pytest.raises(ValueError, match="positive integer"):
                sup.open_subscription(buffer=0)
            with pytest.deprecated_call():
                alias = sup.subscribe(stats=False)
            async with alias as events:  # the deprecated alias is a context manager as well
                sup.force_open("primary", 1.0)
                assert len(drain(events)) == 2
            assert sup.statistics().subscribers == 0


async def test_stats_events_about_once_per_interval(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with rk.open_supervisor(config(stats_interval=1.0)) as sup:
            async with sup.open_subscription() as events:
                seen: list[rk.Stats] = []
                async for event in events:
                    if isinstance(event, rk.Stats):
                        seen.append(event)
                        if len(seen) == 3:
                            break
            assert [s.at for s in seen] == [1.0, 2.0, 3.0]
            snapshot = seen[-1].statistics
            assert isinstance(snapshot, rk.SupervisorStatistics)
            assert snapshot.endpoints["primary"].breaker.state is S.CLOSED


async def test_statistics_are_immutable_snapshots(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(config()) as sup:
            before = sup.statistics()
            h = sup.breaker("primary")
            h.record_success(h.check())
            after = sup.statistics()
            assert before.endpoints["primary"].breaker.successes == 0
            assert after.endpoints["primary"].breaker.successes == 1
            with pytest.raises(TypeError):
                after.endpoints["other"] = after.endpoints["primary"]  # type: ignore[index]
            with pytest.raises(AttributeError):
                after.node_id = "x"  # type: ignore[misc]


async def test_shutdown_cancels_tasks_and_ends_subscriptions(
    mock_clock: trio.testing.MockClock,
) -> None:
    finished = trio.Event()
    received: list[rk.Event] = []
    reader_done = trio.Event()

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            finished.set()

    async def read(sup: rk.Supervisor, *, task_status: trio.TaskStatus[None]) -> None:
        async with sup.open_subscription(stats=False) as events:
            task_status.started()
            async for event in events:
                received.append(event)
        reader_done.set()

    with trio.fail_after(100):
        async with trio.open_nursery() as outside:
            async with rk.open_supervisor(config()) as sup:
                sup.start_task("forever", forever)
                await outside.start(read, sup)
                sup.force_open("primary", 5.0)
                nursery = sup._nursery
                await trio.testing.wait_all_tasks_blocked()
                assert nursery.child_tasks
            assert finished.is_set()
            assert not nursery.child_tasks
            await reader_done.wait()  # its iteration ended with the supervisor
    assert [type(e) for e in received] == [rk.Command, rk.Transition]
    with pytest.raises(RuntimeError, match="shutting down"):
        sup.add_endpoint(endpoint("late"))


async def test_shutdown_closes_sessions_in_parallel_within_a_bound(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP clients that hang while closing cost one bounded wait in all, not one each."""
    closing: list[float] = []

    async def hang(self: httpx.AsyncClient) -> None:
        closing.append(trio.current_time())
        await trio.sleep_forever()

    cfg = config(*(endpoint(f"ep{i}") for i in range(3)))
    with trio.fail_after(1000):
        async with rk.open_supervisor(cfg) as sup:
            for name in sup.endpoint_names:
                async with sup.endpoint(name).session.lease():
                    pass  # builds the endpoint's HTTP client
            monkeypatch.setattr(httpx.AsyncClient, "aclose", hang)
            left_at = trio.current_time()
    assert closing == [left_at] * 3  # all at once
    assert trio.current_time() - left_at <= 5.0


async def test_body_error_is_not_wrapped(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10), pytest.raises(ValueError, match="user bug"):
        async with rk.open_supervisor(config()):
            raise ValueError("user bug")


async def test_startable_form(mock_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            sup = await nursery.start(rk.run_supervisor, config())
            assert isinstance(sup, rk.Supervisor)
            sup.force_open("primary", 1.0)
            await trio.sleep(1)
            assert sup.breaker("primary").state is S.HALF_OPEN
            nursery.cancel_scope.cancel()


async def test_thousand_endpoints(mock_clock: trio.testing.MockClock) -> None:
    endpoints = [endpoint(f"ep{i}", failure_threshold=1, open_duration=5.0) for i in range(1000)]
    cfg = config(*endpoints)
    with trio.fail_after(100):
        async with (
            rk.open_supervisor(cfg) as sup,
            sup.open_subscription(stats=False, buffer=5000) as events,
        ):
            for i in range(0, 1000, 10):
                fail(sup.breaker(f"ep{i}"))
            await trio.sleep(5)
            await trio.testing.wait_all_tasks_blocked()  # let every breaker task run at t=5
            timers = [
                e for e in drain(events) if isinstance(e, rk.Transition) and e.cause == "timer"
            ]
            assert len(timers) == 100
            assert {t.at for t in timers} == {5.0}


async def test_bad_command_duration_is_refused_before_auditing(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with (
            rk.open_supervisor(config()) as sup,
            sup.open_subscription(stats=False) as events,
        ):
            for bad in (-1, 0, float("inf"), float("nan"), True):
                with pytest.raises(ValueError, match="positive number of seconds"):
                    sup.force_open("primary", bad)
                with pytest.raises(ValueError):
                    sup.disable("primary", bad)
            assert drain(events) == []  # no audit record of a command that never happened
            assert sup.breaker("primary").state is S.CLOSED
