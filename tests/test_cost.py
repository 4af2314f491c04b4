"""Prices, rolling spend and budget actions (reject / warn / throttle).

Pure rules run on virtual time; the integration tests price the mock provider's
deterministic usage (input = prompt words, output = reply words) on real sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio._accounting._cost import CostTracker, RollingSum
from rakka_trio._engine import Engine
from rakka_trio.testing import MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

REPLY = "one two three four five six seven eight nine"  # 9 output tokens at the mock
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])  # 1 input token
# $0.10 per input token and $0.20 per output token: one call to the mock costs $1.90.
PRICE = rk.ModelPrice(input=100_000.0, output=200_000.0)
CALL = 1.90


async def test_rolling_sum_forgets_old_spend(mock_clock: trio.testing.MockClock) -> None:
    hour = RollingSum(3600.0, 60)
    hour.add(1.0, trio.current_time())
    await trio.sleep(1800)
    hour.add(2.0, trio.current_time())
    assert hour.total(trio.current_time()) == pytest.approx(3.0)
    await trio.sleep(1860)  # the first amount's minute is out of the window
    assert hour.total(trio.current_time()) == pytest.approx(2.0)
    await trio.sleep(7200)
    assert hour.total(trio.current_time()) == 0.0


async def test_budget_reject_and_recovery_emit_alerts(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Event] = []
    budget = rk.BudgetConfig(hourly=3.0, daily=10.0, on_exceeded="reject")
    tracker = CostTracker("a", budget, rk.PriceTable({"m": PRICE}), events.append)
    usage = rk.Usage(input_tokens=1, output_tokens=9)
    tracker.check()
    assert tracker.charge("m", usage) == pytest.approx(CALL)
    tracker.check()
    tracker.charge("m", usage)
    with pytest.raises(rk.BudgetExceeded, match=r"spent \$3.8000 of its hourly budget"):
        tracker.check()
    (alert,) = events
    assert isinstance(alert, rk.BudgetAlert)
    assert (alert.window, alert.exceeded, alert.action) == ("hourly", True, "reject")
    assert alert.spend == pytest.approx(3.8) and alert.limit == 3.0
    await trio.sleep(3700)
    tracker.check()  # an hour later the rolling window is within budget again
    assert isinstance(events[-1], rk.BudgetAlert) and events[-1].exceeded is False
    stats = tracker.statistics()
    assert (stats.hour, stats.day, stats.total) == (0.0, pytest.approx(3.8), pytest.approx(3.8))
    assert tracker.charge("unknown-model", usage) is None
    assert tracker.statistics().unpriced == 1


async def test_budget_warn_only_publishes(mock_clock: trio.testing.MockClock) -> None:
    events: list[rk.Event] = []
    tracker = CostTracker(
        "a",
        rk.BudgetConfig(daily=1.0, on_exceeded="warn"),
        rk.PriceTable({"m": PRICE}),
        events.append,
    )
    tracker.charge("m", rk.Usage(input_tokens=1, output_tokens=9))
    tracker.check()  # no exception
    assert tracker.exceeded() == "daily"
    assert len(events) == 1 and isinstance(events[0], rk.BudgetAlert)
    assert not tracker.throttled


async def test_budget_throttle_halves_engine_concurrency(
    mock_clock: trio.testing.MockClock,
) -> None:
    from rakka_trio._accounting import EndpointMeter

    from .test_engine import FakeEndpoint

    tracker = CostTracker(
        "fake", rk.BudgetConfig(hourly=1.0, on_exceeded="throttle"), rk.PriceTable({"m": PRICE})
    )
    meter = EndpointMeter("fake", tracker)
    fake = FakeEndpoint()
    async with trio.open_nursery() as nursery:
        engine = Engine(
            fake,
            rk.EngineConfig(max_concurrent=8),
            spawn=lambda name, fn, *a: nursery.start_soon(fn, *a, name=name),
            meter=meter,
        )
        assert engine.max_concurrent == 8
        tracker.charge("m", rk.Usage(input_tokens=1, output_tokens=9))
        assert engine.max_concurrent == 4
        subs = [await engine.submit(HI) for _ in range(12)]
        for sub in subs:
            nursery.start_soon(sub.result)
        await trio.testing.wait_all_tasks_blocked()
        assert engine.statistics().busy_workers == 4
        await trio.sleep(3700)  # the hour passes: full concurrency again
        assert engine.max_concurrent == 8
        engine.close()
    assert fake.peak == 4


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(reply=REPLY, chunks=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def endpoint(mock: MockProvider, name: str, budget: rk.BudgetConfig) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url=mock.base_url_for("openai"),
        model="priced-model",
        prices={"priced-model": PRICE},
        budget=budget,
    )


async def test_reject_budget_on_real_calls_and_deployment_fallback(mock: MockProvider) -> None:
    cfg = rk.SupervisorConfig(
        endpoints=[
            endpoint(mock, "cheap", rk.BudgetConfig(hourly=3.0)),
            endpoint(mock, "backup", rk.BudgetConfig()),
        ],
        deployments=[rk.DeploymentConfig(name="chat", endpoints=["cheap", "backup"])],
    )
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            ep = sup.endpoint("cheap")
            await ep.complete(HI)
            async with ep.stream(HI) as chunks:
                assert [c.text async for c in chunks]
            sent = len(mock.requests)
            with pytest.raises(rk.BudgetExceeded):
                await ep.complete(HI)
            with pytest.raises(rk.BudgetExceeded):
                await ep.submit(HI)
            assert len(mock.requests) == sent  # refused before sending
            done = await sup.deployment("chat").complete(HI)
            assert done.endpoint == "backup"
            metrics = sup.statistics().endpoints["cheap"].metrics
            assert metrics is not None
            assert metrics.cost == pytest.approx(2 * CALL)
            assert metrics.budget.hour == pytest.approx(2 * CALL)
            assert metrics.budget.exceeded == "hourly"
            assert metrics.requests["budget"] == 3
            alert = events.receive_nowait()
            while not isinstance(alert, rk.BudgetAlert):
                alert = events.receive_nowait()
            assert (alert.endpoint, alert.window, alert.exceeded) == ("cheap", "hourly", True)


async def test_throttle_budget_on_real_calls(mock: MockProvider) -> None:
    budget = rk.BudgetConfig(daily=1.0, on_exceeded="throttle")
    cfg = rk.SupervisorConfig(
        endpoints=[
            attrs.evolve(endpoint(mock, "a", budget), engine=rk.EngineConfig(max_concurrent=6))
        ]
    )
    with trio.fail_after(10):
        async with rk.open_supervisor(cfg) as sup:
            assert (await (await sup.endpoint("a").submit(HI)).result()).text == REPLY
            stats = sup.statistics().endpoints["a"]
            assert stats.engine is not None and stats.engine.max_concurrent == 3
            await sup.endpoint("a").complete(HI)  # throttling never refuses
