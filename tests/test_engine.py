"""Engine rules on virtual time: priority and FIFO order, capacity policies, cancellation,
deadlines, worker pool bounds. A fake endpoint stands in for the provider so each timing rule
is exact (``MockClock(autojump_threshold=0)``); the real-socket paths are in
``test_engine_fallback.py``."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio._accounting import CostTracker, EndpointMeter, PriceTable
from rakka_trio._breaker import BreakerHandle
from rakka_trio._engine import Engine

pytestmark = pytest.mark.trio

Priority = rk.Priority


class FakeStream:
    """What Endpoint.stream yields, with fixed chunks ``gap`` seconds apart."""

    def __init__(self, texts: tuple[str, ...], gap: float) -> None:
        self.attempts = 1
        self.usage: rk.Usage | None = None
        self.finish_reason: str | None = None
        self._texts = texts
        self._gap = gap

    def __aiter__(self) -> AsyncIterator[rk.StreamChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[rk.StreamChunk]:
        for i, text in enumerate(self._texts):
            if i:
                await trio.sleep(self._gap)
            if i == len(self._texts) - 1:
                self.usage = rk.Usage(input_tokens=10, output_tokens=len(self._texts))
                self.finish_reason = "stop"
                yield rk.StreamChunk(text=text, finish_reason="stop", usage=self.usage)
            else:
                yield rk.StreamChunk(text=text)


class FakeEndpoint:
    """Records when each request (named by its prompt) starts and how its call ends."""

    def __init__(self, name: str = "fake", *, hold: float = 1.0, **config: Any) -> None:
        self.config = rk.EndpointConfig(
            name=name, provider="openai", base_url="http://127.0.0.1:9/v1", model="m", **config
        )
        self.name = name
        self.breaker = BreakerHandle(name)
        self.hold = hold
        self.holds: dict[str, float] = {}
        self.errors: dict[str, BaseException] = {}
        self.texts: tuple[str, ...] = ("a", "b")
        self.gap = 0.0
        self.started: list[str] = []
        self.ended: dict[str, str] = {}
        self.active = 0
        self.peak = 0
        self.wait = 0.0  # what the rate limiter would make a request wait now
        self.room = 1.0  # rate-limit headroom
        self.move_ons: list[Callable[[rk.RakkaError], bool] | None] = []

    def wait_estimate(self, request: rk.ChatRequest) -> float:
        return self.wait

    def headroom(self) -> float:
        return self.room

    @asynccontextmanager
    async def stream(
        self,
        request: rk.ChatRequest,
        *,
        move_on: Callable[[rk.RakkaError], bool] | None = None,
    ) -> AsyncIterator[FakeStream]:
        label = str(request.messages[0]["content"])
        self.move_ons.append(move_on)
        self.started.append(label)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(self.holds.get(label, self.hold))
            if label in self.errors:
                raise self.errors[label]
            yield FakeStream(self.texts, self.gap)
            self.ended[label] = "ok"
        except BaseException as exc:
            self.ended[label] = type(exc).__name__
            raise
        finally:
            self.active -= 1


def req(label: str, **kw: Any) -> rk.ChatRequest:
    return rk.ChatRequest(messages=[{"role": "user", "content": label}], **kw)


def meter_for(name: str, budget: rk.BudgetConfig | None = None) -> EndpointMeter:
    return EndpointMeter(name, CostTracker(name, budget or rk.BudgetConfig(), PriceTable()))


@asynccontextmanager
async def running(
    fake: FakeEndpoint, meter: EndpointMeter | None = None, **config: Any
) -> AsyncIterator[Engine]:
    """An engine whose workers run in a nursery of the test (as the supervisor's would)."""
    async with trio.open_nursery() as nursery:

        def spawn(name: str, fn: Any, *args: Any) -> None:
            nursery.start_soon(fn, *args, name=name)

        engine = Engine(fake, rk.EngineConfig(**config), spawn=spawn, meter=meter)
        try:
            yield engine
        finally:
            engine.close()  # every worker must end, or this nursery never exits


async def drain(sub: rk.Submission) -> str:
    async with sub:
        return "".join([c.text async for c in sub])


async def test_priority_classes_then_fifo_within_each(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint()
    async with running(fake, max_concurrent=1) as engine:
        first = await engine.submit(req("first"))
        await trio.testing.wait_all_tasks_blocked()  # the only worker is busy with "first"
        order = [
            ("b1", Priority.BACKGROUND),
            ("n1", Priority.NORMAL),
            ("h1", Priority.HIGH),
            ("n2", Priority.NORMAL),
            ("c1", Priority.CRITICAL),
            ("h2", Priority.HIGH),
            ("b2", Priority.BACKGROUND),
            ("c2", Priority.CRITICAL),
        ]
        subs = [await engine.submit(req(label), priority=p) for label, p in order]
        assert engine.statistics().queue_depth == len(order)
        assert dict(engine.statistics().queued) == {
            "CRITICAL": 2,
            "HIGH": 2,
            "NORMAL": 2,
            "BACKGROUND": 2,
        }
        texts = [await drain(s) for s in (first, *subs)]
    assert fake.started == ["first", "c1", "c2", "h1", "h2", "n1", "n2", "b1", "b2"]
    assert texts == ["ab"] * 9
    assert trio.current_time() == pytest.approx(9.0)  # one at a time, a second each
    assert all(s.outcome is not None and s.outcome.status == "ok" for s in subs)


async def test_workers_are_bounded_and_leave_when_idle(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint()
    async with running(fake, max_concurrent=3, idle_timeout=5.0) as engine:
        subs = [await engine.submit(req(f"r{i}")) for i in range(10)]
        assert engine.statistics().workers == 0  # started on demand, not yet running
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(drain, sub)
            await trio.testing.wait_all_tasks_blocked()
            stats = engine.statistics()
            assert (stats.workers, stats.busy_workers, stats.queue_depth) == (3, 3, 7)
        assert fake.peak == 3
        assert trio.current_time() == pytest.approx(4.0)  # ceil(10 / 3) rounds of 1 s
        await trio.sleep(5.1)
        assert engine.statistics().workers == 0  # idle workers left: no tasks while quiet


async def test_reject_policy_raises_backpressure_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint()
    meter = meter_for("fake")
    async with running(fake, meter, max_concurrent=1, queue_size=1, on_full="reject") as engine:
        running_one = await engine.submit(req("a"))
        queued = await engine.submit(req("b"))
        before = trio.current_time()
        with pytest.raises(rk.Backpressure):
            await engine.submit(req("c"), priority=Priority.CRITICAL)  # priority is no bypass
        assert trio.current_time() == before
        assert engine.statistics().rejected == 1
        assert meter.requests["backpressure"] == 1
        assert [await drain(s) for s in (running_one, queued)] == ["ab", "ab"]
    assert fake.started == ["a", "b"]


async def test_fallback_policy_without_a_chain_is_backpressure(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint()
    async with running(fake, max_concurrent=1, queue_size=0, on_full="fallback") as engine:
        sub = await engine.submit(req("a"))
        with pytest.raises(rk.Backpressure):
            await engine.submit(req("b"))
        await drain(sub)


async def test_queue_policy_waits_for_room(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(hold=2.0)
    async with running(
        fake, max_concurrent=1, queue_size=1, on_full="queue", queue_timeout=5.0
    ) as engine:
        a = await engine.submit(req("a"))
        b = await engine.submit(req("b"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, a)
            nursery.start_soon(drain, b)
            c = await engine.submit(req("c"))  # room when "a" finishes at t=2
            assert trio.current_time() == pytest.approx(2.0)
            assert await drain(c) == "ab"
    assert fake.started == ["a", "b", "c"]


async def test_queue_policy_times_out_with_backpressure(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(hold=60.0)
    meter = meter_for("fake")
    async with running(
        fake, meter, max_concurrent=1, queue_size=0, on_full="queue", queue_timeout=5.0
    ) as engine:
        a = await engine.submit(req("a"))
        with pytest.raises(rk.Backpressure, match="no room within 5s"):
            await engine.submit(req("b"))
        assert trio.current_time() == pytest.approx(5.0)
        assert engine.statistics().waiting_for_room == 0
        assert meter.requests["backpressure"] == 1
        await a.aclose()
    assert fake.started == ["a"]


async def test_waiters_for_room_are_served_by_priority(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint()
    admitted: list[str] = []
    async with running(
        fake, max_concurrent=1, queue_size=0, on_full="queue", queue_timeout=30.0
    ) as engine:
        first = await engine.submit(req("first"))

        async def submit(label: str, priority: rk.Priority) -> None:
            sub = await engine.submit(req(label), priority=priority)
            admitted.append(label)
            await drain(sub)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, first)
            for label, p in [("n", Priority.NORMAL), ("b", Priority.BACKGROUND)]:
                nursery.start_soon(submit, label, p)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(submit, "h", Priority.HIGH)
            await trio.testing.wait_all_tasks_blocked()
            assert engine.statistics().waiting_for_room == 3
    assert admitted == ["h", "n", "b"]
    assert fake.started == ["first", "h", "n", "b"]


async def test_cancelled_while_waiting_for_room_leaves_nothing_behind(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint(hold=10.0)
    async with running(
        fake, max_concurrent=1, queue_size=0, on_full="queue", queue_timeout=30.0
    ) as engine:
        a = await engine.submit(req("a"))
        with trio.move_on_after(1.0):
            await engine.submit(req("b"))
        assert engine.statistics().waiting_for_room == 0
        assert await drain(a) == "ab"
        await trio.sleep(1)
        assert engine.statistics().queue_depth == 0
    assert fake.started == ["a"]


async def test_closing_a_queued_request_takes_it_off_the_queue(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint()
    meter = meter_for("fake")
    async with running(fake, meter, max_concurrent=1) as engine:
        a = await engine.submit(req("a"))
        await trio.testing.wait_all_tasks_blocked()  # "a" is running
        b = await engine.submit(req("b"))
        assert engine.statistics().queue_depth == 1
        await b.aclose()
        assert b.outcome is not None and b.outcome.status == "cancelled"
        assert engine.statistics().queue_depth == 0
        assert await drain(a) == "ab"
        with pytest.raises(trio.ClosedResourceError):
            await b.receive()
    assert fake.started == ["a"]
    assert meter.requests["cancelled"] == 1


async def test_closing_a_running_request_cancels_the_call(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint(hold=0.0)
    fake.texts = tuple("abcdefgh")
    fake.gap = 1.0
    async with running(fake, max_concurrent=1) as engine:
        sub = await engine.submit(req("a"))
        async with sub:
            assert (await sub.receive()).text == "a"
            assert (await sub.receive()).text == "b"
        # aclose() returned after the call ended: the provider side saw the cancellation.
        assert fake.ended == {"a": "Cancelled"}
        assert trio.current_time() == pytest.approx(1.0)
        assert sub.outcome is not None and sub.outcome.status == "cancelled"
        assert engine.statistics().busy_workers == 0


async def test_a_reader_that_stops_reading_holds_only_its_worker(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint(hold=0.0)
    fake.texts = tuple("abcdefgh")
    async with running(fake, max_concurrent=2, stream_buffer=2) as engine:
        stuck = await engine.submit(req("stuck"))
        await trio.testing.wait_all_tasks_blocked()
        assert engine.statistics().busy_workers == 1  # blocked on its full chunk buffer
        others = [await engine.submit(req(f"r{i}")) for i in range(3)]
        assert [await drain(s) for s in others] == ["abcdefgh"] * 3
        await stuck.aclose()
        assert fake.ended["stuck"] == "BrokenResourceError"


async def test_deadline_spent_in_the_queue(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(hold=10.0)
    meter = meter_for("fake")
    async with running(fake, meter, max_concurrent=1) as engine:
        a = await engine.submit(req("a"))
        with trio.fail_after(3):
            b = await engine.submit(req("b"))  # the caller's deadline is the request's
        async with b:
            with pytest.raises(rk.DeadlineExceeded) as info:  # a local limit
                await b.receive()
        assert info.value.phase == "deadline"
        assert trio.current_time() == pytest.approx(3.0)
        assert b.outcome is not None and b.outcome.status == "error"
        assert meter.requests["timeout"] == 1
        assert await drain(a) == "ab"
    assert fake.started == ["a"]


async def test_deadline_during_the_call_cancels_it(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(hold=10.0)
    async with running(fake, max_concurrent=1) as engine:
        with trio.fail_after(2):
            sub = await engine.submit(req("a"))
        async with sub:
            with pytest.raises(rk.DeadlineExceeded):
                await sub.receive()
        assert fake.ended == {"a": "Cancelled"}
        assert trio.current_time() == pytest.approx(2.0)


async def test_exactly_one_outcome_and_the_error_is_raised_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint()
    fake.errors["bad"] = rk.ServerError("boom", status=503)
    async with running(fake) as engine:
        sub = await engine.submit(req("bad"))
        async with sub:
            with pytest.raises(rk.ServerError):
                await sub.receive()
            with pytest.raises(trio.EndOfChannel):
                await sub.receive()
        assert sub.outcome is not None
        assert (sub.outcome.status, sub.outcome.endpoint) == ("error", "fake")
        assert isinstance(sub.outcome.error, rk.ServerError)
        # Closing after the end does not change it.
        await sub.aclose()
        assert sub.outcome.status == "error"


async def test_result_collects_a_completion(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint()
    async with running(fake) as engine:
        sub = await engine.submit(req("a"))
        async with sub:
            done = await sub.result()
        assert (done.text, done.endpoint, done.finish_reason) == ("ab", "fake", "stop")
        assert done.usage == rk.Usage(input_tokens=10, output_tokens=2)
        assert sub.outcome is not None and sub.outcome.queued == pytest.approx(0.0)


async def test_outcome_reports_time_in_the_queue(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(hold=2.0)
    async with running(fake, max_concurrent=1) as engine:
        a = await engine.submit(req("a"))
        b = await engine.submit(req("b"))
        await drain(a)
        await drain(b)
    assert b.outcome is not None and b.outcome.queued == pytest.approx(2.0)


async def test_close_fails_queued_requests_and_ends_every_worker(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint(hold=100.0)
    async with running(fake, max_concurrent=1) as engine:
        a = await engine.submit(req("a"))
        b = await engine.submit(req("b"))
        await trio.testing.wait_all_tasks_blocked()
        engine.close()
        for sub in (a, b):
            with pytest.raises(rk.UnknownEndpoint):
                await sub.receive()
        with pytest.raises(rk.UnknownEndpoint):
            await engine.submit(req("c"))
    # Leaving running() proves every worker ended with the engine.
    assert fake.ended == {"a": "Cancelled"}


async def test_open_breaker_refuses_at_submit(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint()
    meter = meter_for("fake")
    fake.breaker.force_open(30.0, reason="incident")
    async with running(fake, meter) as engine:
        with pytest.raises(rk.CircuitOpen) as info:
            await engine.submit(req("a"))
        assert info.value.retry_at == pytest.approx(30.0)
        assert meter.requests["circuit_open"] == 1
    assert fake.started == []


async def test_context_window_precheck(mock_clock: trio.testing.MockClock) -> None:
    fake = FakeEndpoint(context_window=100)
    async with running(fake) as engine:
        with pytest.raises(rk.ContextLengthExceeded, match="context window is 100"):
            await engine.submit(req("x" * 400, max_tokens=50))
        assert await drain(await engine.submit(req("x" * 40, max_tokens=50))) == "ab"


async def test_submit_validates_priority() -> None:
    fake = FakeEndpoint()
    async with running(fake) as engine:
        with pytest.raises(TypeError, match="Priority"):
            await engine.submit(req("a"), priority=1)  # type: ignore[arg-type]


async def test_a_dropped_handle_warns_and_changes_nothing(
    mock_clock: trio.testing.MockClock,
) -> None:
    import gc

    fake = FakeEndpoint(hold=0.0)
    fake.texts = tuple("abcdefgh")
    meter = meter_for("fake")
    async with running(fake, meter, max_concurrent=1, stream_buffer=1) as engine:
        running_one = await engine.submit(req("running"))
        queued = await engine.submit(req("queued"))
        await trio.testing.wait_all_tasks_blocked()  # "running" fills its buffer and waits
        with pytest.warns(ResourceWarning, match="without being closed"):
            del running_one, queued  # never read, never closed
            gc.collect()
        await trio.testing.wait_all_tasks_blocked()
        # A finaliser may run anywhere (another thread, after the run): it only warns.
        stats = engine.statistics()
        assert (stats.busy_workers, stats.queue_depth) == (1, 1)
    assert fake.started == ["running"]  # closing the engine ended both
    assert fake.ended["running"] in ("Cancelled", "BrokenResourceError")
    assert meter.requests["cancelled"] == 1


# --- the submission's interface ---------------------------------------------------------


async def test_submit_as_context_manager_admits_on_entry_and_closes_on_exit(
    mock_clock: trio.testing.MockClock,
) -> None:
    fake = FakeEndpoint(hold=0.0)
    fake.texts = ("a", "b", "c")
    async with running(fake) as engine:
        async with engine.submit(req("one")) as sub:
            assert isinstance(sub, trio.abc.ReceiveChannel)
            assert (await sub.receive()).text == "a"
        # Leaving the block closed it: the rest was never read.
        assert sub.outcome is not None and sub.outcome.status == "cancelled"
        with pytest.raises(trio.ClosedResourceError):
            await sub.receive()
        # Awaiting it still returns the submission itself.
        sub = await engine.submit(req("two"))
        assert [c.text async for c in sub] == ["a", "b", "c"]
        with pytest.raises(trio.EndOfChannel):
            await sub.receive()
        await sub.aclose()
        assert sub.outcome is not None and sub.outcome.status == "ok"
    # A lone endpoint has nowhere to move a request: its retries are its own business.
    assert fake.move_ons == [None, None]


# --- routing decisions on virtual time (fake endpoints) -----------------------------------


@asynccontextmanager
async def routed(
    fakes: list[FakeEndpoint], **config: Any
) -> AsyncIterator[tuple[rk.Deployment, dict[str, Engine]]]:
    """A deployment over ``fakes``, each on its own engine."""
    from rakka_trio._engine import Deployment

    async with trio.open_nursery() as nursery:

        def spawn(name: str, fn: Any, *args: Any) -> None:
            nursery.start_soon(fn, *args, name=name)

        engines = {f.name: Engine(f, rk.EngineConfig(), spawn=spawn) for f in fakes}
        dep_config = rk.DeploymentConfig(name="d", endpoints=list(engines), **config)
        try:
            yield Deployment(dep_config, engines.get), engines
        finally:
            for engine in engines.values():
                engine.close()


async def test_an_endpoint_that_would_wait_is_used_only_when_none_can_serve_now(
    mock_clock: trio.testing.MockClock,
) -> None:
    first, second = FakeEndpoint("first", hold=0.0), FakeEndpoint("second", hold=0.0)
    async with routed([first, second]) as (dep, _):
        first.wait = 5.0  # its rate-limit key is paused for 5 s
        assert (await dep.complete(req("a"))).endpoint == "second"
        second.wait = 2.0  # both would wait: the shorter wait wins
        assert (await dep.complete(req("b"))).endpoint == "second"
        second.breaker.force_open(60.0)  # refused outright: wait for the first after all
        assert (await dep.complete(req("c"))).endpoint == "first"
        stats = dep.statistics()
    # Moves are counted where the strategy's first choice was passed over: the paused first
    # endpoint twice; the last request went to the first choice after all (no move).
    assert stats.fallback_routes == {("first", "second", "RateLimitExceeded"): 2}
    # Only multi-endpoint deployments let the endpoint move a request on instead of retrying.
    assert all(m is not None for m in first.move_ons + second.move_ons)


async def test_latency_forgets_old_measurements_and_measures_again(
    mock_clock: trio.testing.MockClock,
) -> None:
    from rakka_trio._engine._routing import LATENCY_MEMORY

    slow, fast = FakeEndpoint("slow", hold=1.0), FakeEndpoint("fast", hold=0.01)
    async with routed([slow, fast], strategy="latency", seed=5) as (dep, engines):
        served = Counter([(await dep.complete(req(str(i)))).endpoint for i in range(40)])
        assert served["fast"] >= 36  # unmeasured ones first, then the fast one
        assert engines["slow"].latency_estimate(trio.current_time()) == pytest.approx(1.0)
        await trio.sleep(LATENCY_MEMORY + 1)
        assert engines["slow"].latency_estimate(trio.current_time()) is None
        # Forgotten: unmeasured endpoints go first, so the slow one is measured again within
        # the next two requests (the first may be an exploration pick).
        again = [(await dep.complete(req(f"again{i}"))).endpoint for i in range(2)]
        assert "slow" in again
