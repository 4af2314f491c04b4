"""Deployments and the engine on real sockets: fallback on each trigger, never after output,
exactly one outcome per request under mixed faults, cancellation by the reader.

Two loopback mock providers play the primary and the backup so faults hit one of them only.
Real sockets need the real clock: timings are short and every test is bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

REPLY = "one two three four five six seven eight"
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])


@pytest.fixture
async def mocks() -> AsyncIterator[tuple[MockProvider, MockProvider]]:
    primary = MockProvider(reply=REPLY, chunks=8, seed=1)
    backup = MockProvider(reply=REPLY, chunks=8, seed=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, primary)
        await nursery.start(serve_mock_provider, backup)
        yield primary, backup
        nursery.cancel_scope.cancel()


def endpoint(mock: MockProvider, name: str, *, retries: int = 0, **kw: Any) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url=mock.base_url_for("openai"),
        model="gpt-4o-mini",
        retry=rk.RetryPolicy(max_retries=retries, initial_backoff=0.01, max_backoff=0.02),
        **kw,
    )


def chain(
    primary: rk.EndpointConfig, backup: rk.EndpointConfig, **deployment: Any
) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[primary, backup],
        deployments=[
            rk.DeploymentConfig(name="chat", endpoints=[primary.name, backup.name], **deployment)
        ],
    )


async def test_503_storm_on_the_primary_fails_no_user_request(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(503))  # the whole test long
    breaker = rk.BreakerConfig(failure_threshold=3, open_duration=60.0)
    cfg = chain(
        endpoint(primary, "primary", retries=1, breaker=breaker), endpoint(backup, "backup")
    )
    results: list[rk.Completion] = []
    with trio.fail_after(20):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")
            users = trio.CapacityLimiter(4)  # 4 users at a time, 40 requests in all

            async def user() -> None:
                async with users:
                    results.append(await dep.complete(HI))

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(user)
            assert sup.breaker("primary").state is rk.BreakerState.OPEN
            stats = dep.statistics()
    assert len(results) == 40
    assert {r.text for r in results} == {REPLY}
    assert {r.endpoint for r in results} == {"backup"}
    assert stats.requests["ok"] == 40 and sum(stats.requests.values()) == 40
    # Once the breaker opened, requests skipped the primary without sending anything.
    assert stats.fallbacks["primary:CircuitOpen"] >= 30
    assert len(primary.requests) <= 4 * 2 + 3  # in flight when it tripped, with one retry


async def test_open_breaker_sends_nothing_to_the_primary(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary"), endpoint(backup, "backup"))
        ) as sup:
            sup.force_open("primary", 60.0, reason="incident-42")
            async with sup.deployment("chat").stream(HI) as chunks:
                text = "".join([c.text async for c in chunks])
            assert chunks.outcome is not None
            assert (chunks.outcome.endpoint, chunks.outcome.fallbacks) == ("backup", ("primary",))
            assert sup.statistics().endpoints["primary"].metrics is not None
    assert text == REPLY
    assert primary.requests == []


async def test_capacity_fallback_and_reject(mocks: tuple[MockProvider, MockProvider]) -> None:
    primary, backup = mocks
    primary.chunk_delay = 0.05  # keeps the primary's one worker busy for a while
    busy = rk.EngineConfig(max_concurrent=1, queue_size=0, on_full="fallback")
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", engine=busy), endpoint(backup, "backup"))
        ) as sup:
            dep = sup.deployment("chat")
            first = await dep.submit(HI)
            second = await dep.submit(HI)  # the primary is full: straight to the backup
            async with first, second:
                assert [c.text async for c in second]
                assert [c.text async for c in first]
            assert first.outcome is not None and first.outcome.endpoint == "primary"
            assert second.outcome is not None and second.outcome.endpoint == "backup"
            assert second.outcome.fallbacks == ("primary",)
            assert dep.statistics().fallbacks == {"primary:Backpressure": 1}

    reject = rk.EngineConfig(max_concurrent=1, queue_size=0, on_full="reject")
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", engine=reject), endpoint(backup, "backup"))
        ) as sup:
            dep = sup.deployment("chat")
            async with await dep.submit(HI) as first:
                # "reject" sheds load: no spill-over to the backup.
                with pytest.raises(rk.Backpressure):
                    await dep.submit(HI)
                assert [c.text async for c in first]
            assert dep.statistics().requests["backpressure"] == 1
    assert backup.statistics().requests == 1


async def test_fallback_when_retries_are_exhausted(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.status(502), times=3)
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", retries=2), endpoint(backup, "backup"))
        ) as sup:
            sub = await sup.deployment("chat").submit(HI)
            async with sub:
                done = await sub.result()
            metrics = sup.statistics().endpoints["primary"].metrics
    assert (done.text, done.endpoint) == (REPLY, "backup")
    assert sub.outcome is not None and sub.outcome.fallbacks == ("primary",)
    assert len(primary.requests) == 3  # the first try and both retries
    assert metrics is not None and metrics.requests["5xx"] == 1


async def test_context_window_fallback(mocks: tuple[MockProvider, MockProvider]) -> None:
    primary, backup = mocks
    long = rk.ChatRequest(messages=[{"role": "user", "content": "word " * 400}], max_tokens=64)
    with trio.fail_after(10):
        # Known up front: the primary's configured window is too small; nothing is sent.
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", context_window=256), endpoint(backup, "backup"))
        ) as sup:
            done = await sup.deployment("chat").complete(long)
            assert done.endpoint == "backup"
            assert await sup.deployment("chat").complete(HI) == await sup.endpoint(
                "primary"
            ).complete(HI)
        assert len(primary.requests) == 2  # only the short requests

        # Learned from the provider: a 400 context_length_exceeded moves the request on.
        primary.add_fault(
            "openai",
            Fault.status(400, code="context_length_exceeded", message="maximum context length"),
            times=1,
        )
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary"), endpoint(backup, "backup"))
        ) as sup:
            done = await sup.deployment("chat").complete(long)
            assert done.endpoint == "backup"
            assert sup.breaker("primary").statistics().failures == 0  # a 4xx never counts


async def test_never_falls_back_after_output_was_delivered(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    primary.add_fault("openai", Fault.mid_stream_error(after_chunks=3), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", retries=3), endpoint(backup, "backup"))
        ) as sup:
            received: list[str] = []
            with pytest.raises(rk.ServerError):  # the in-stream server_error
                async with sup.deployment("chat").stream(HI) as chunks:
                    async for chunk in chunks:
                        received.append(chunk.text)
            text = "".join(received)
            assert text and REPLY.startswith(text) and text != REPLY
            assert chunks.outcome is not None and chunks.outcome.status == "error"
            assert chunks.outcome.fallbacks == ()
            assert backup.requests == []  # never repeated elsewhere

            # complete() delivers nothing before the end: the same failure falls back, and
            # the primary's partial output is discarded (no duplication).
            primary.add_fault("openai", Fault.mid_stream_error(after_chunks=3), times=1)
            done = await sup.deployment("chat").complete(HI)
            assert (done.text, done.endpoint) == (REPLY, "backup")


async def test_non_idempotent_requests_fall_back_only_when_nothing_was_sent(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    once = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}], idempotent=False)
    primary.add_fault("openai", Fault.status(503), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary", retries=2), endpoint(backup, "backup"))
        ) as sup:
            with pytest.raises(rk.ServerError):
                await sup.deployment("chat").complete(once)
            assert backup.requests == []
            sup.force_open("primary", 30.0)
            assert (await sup.deployment("chat").complete(once)).endpoint == "backup"


async def test_wait_for_recovery_within_the_deadline(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(
                endpoint(primary, "primary"),
                endpoint(backup, "backup"),
                wait_for_recovery=True,
                timeout=5.0,
            )
        ) as sup:
            sup.force_open("primary", 0.3)
            sup.force_open("backup", 30.0)
            start = trio.current_time()
            done = await sup.deployment("chat").complete(HI)
            assert done.endpoint == "primary"
            assert trio.current_time() - start >= 0.29
            assert sup.deployment("chat").statistics().recovery_waits == 1

            # Recovery after the request's deadline: no wait, the breaker's error at once.
            sup.force_open("primary", 30.0)
            start = trio.current_time()
            with trio.fail_after(1.0), pytest.raises(rk.CircuitOpen):
                await sup.deployment("chat").complete(HI)
            assert trio.current_time() - start < 0.5


async def test_without_waiting_all_open_fails_fast(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, backup = mocks
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary"), endpoint(backup, "backup"))
        ) as sup:
            sup.force_open("primary", 0.3)
            sup.force_open("backup", 0.3)
            with pytest.raises(rk.CircuitOpen) as info:
                await sup.deployment("chat").submit(HI)
            assert info.value.endpoint == "backup"
            assert sup.deployment("chat").statistics().requests["circuit_open"] == 1


async def test_closing_the_handle_cancels_the_provider_call(
    mocks: tuple[MockProvider, MockProvider],
) -> None:
    primary, _ = mocks
    primary.chunk_delay = 0.1
    with trio.fail_after(10):
        async with rk.open_supervisor(
            rk.SupervisorConfig(endpoints=[endpoint(primary, "primary")])
        ) as sup:
            sub = await sup.endpoint("primary").submit(HI, priority=rk.Priority.HIGH)
            async with sub:
                assert (await sub.receive()).text
            # aclose() returned once the call ended; the provider saw the client go away.
            await primary.wait_for(lambda: primary.requests[-1].outcome != "pending")
            assert primary.requests[-1].outcome == "disconnected"
            assert sub.outcome is not None and sub.outcome.status == "cancelled"
            stats = sup.statistics().endpoints["primary"]
            assert stats.metrics is not None and stats.metrics.requests["cancelled"] == 1
            assert (stats.in_flight, stats.queue_depth) == (0, 0)
            assert sup.breaker("primary").statistics().failures == 0


async def test_removed_endpoint_is_skipped(mocks: tuple[MockProvider, MockProvider]) -> None:
    primary, backup = mocks
    with trio.fail_after(10):
        async with rk.open_supervisor(
            chain(endpoint(primary, "primary"), endpoint(backup, "backup"))
        ) as sup:
            sup.remove_endpoint("primary")
            assert (await sup.deployment("chat").complete(HI)).endpoint == "backup"
            with pytest.raises(rk.UnknownEndpoint, match="deployment"):
                sup.deployment("nope")


FAULTS = [
    Fault.status(503),
    Fault.status(500),
    Fault.rate_limited(retry_after=0.01),
    Fault.truncate(after_chunks=2),
    Fault.truncate(after_chunks=1, close_connection=True),
    Fault.mid_stream_error(after_chunks=2),
    Fault.connection_reset(after_bytes=0),
    Fault.connection_reset(after_bytes=200),
    Fault.slow_first_byte(5.0),
    Fault.stall(after_chunks=3, duration=5.0),
    Fault.content_filter(after_chunks=2),
    Fault.status(400),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_exactly_one_outcome_per_request_under_mixed_faults(
    mocks: tuple[MockProvider, MockProvider], seed: int
) -> None:
    primary, backup = mocks
    rng = random.Random(seed)
    for mock in (primary, backup):
        for fault in FAULTS:
            mock.add_fault("openai", fault, probability=0.06)
    timeouts = rk.Timeouts(first_byte=0.3, read_gap=0.3)
    engine_cfg = rk.EngineConfig(max_concurrent=6, queue_size=20, on_full="fallback")
    cfg = chain(
        endpoint(primary, "primary", retries=1, timeouts=timeouts, engine=engine_cfg),
        endpoint(backup, "backup", retries=1, timeouts=timeouts, engine=engine_cfg),
    )
    subs: list[rk.Submission] = []
    refused: list[rk.RakkaError] = []
    texts: dict[int, str] = {}
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup:
            dep = sup.deployment("chat")

            async def user(i: int) -> None:
                try:
                    sub = await dep.submit(HI, priority=rng.choice(list(rk.Priority)))
                except rk.RakkaError as exc:
                    refused.append(exc)
                    return
                subs.append(sub)
                stop_after = rng.choice([None, None, None, 1, 3])
                parts: list[str] = []
                async with sub:
                    try:
                        async for chunk in sub:
                            parts.append(chunk.text)
                            if stop_after is not None and len(parts) >= stop_after:
                                break
                    except rk.RakkaError:
                        pass
                texts[i] = "".join(parts)

            async with trio.open_nursery() as nursery:
                for i in range(80):
                    nursery.start_soon(user, i)
                    if i % 10 == 0:
                        await trio.sleep(0.01)
            stats = sup.statistics()
            dep_stats = dep.statistics()
        # Every provider response finished (no request left hanging at the provider).
        for mock in (primary, backup):
            await mock.wait_for(lambda m=mock: m.statistics().pending == 0)  # type: ignore[misc]
    outcomes = [s.outcome for s in subs]
    assert all(o is not None for o in outcomes)
    assert len(subs) + len(refused) == 80
    assert sum(dep_stats.requests.values()) == 80  # one final outcome each, counted once
    for text in texts.values():
        assert REPLY.startswith(text)  # never duplicated or mixed across endpoints
    for sub in subs:
        assert sub.outcome is not None
        if sub.outcome.status == "ok":
            assert sub.outcome.endpoint in ("primary", "backup")
        elif sub.outcome.status == "error":
            assert isinstance(sub.outcome.error, rk.RakkaError)
    assert any(o is not None and o.status == "ok" for o in outcomes)
    for ep in stats.endpoints.values():
        assert (ep.in_flight, ep.queue_depth) == (0, 0)
        assert ep.engine is not None and ep.engine.busy_workers == 0
        assert ep.engine.workers <= 6
