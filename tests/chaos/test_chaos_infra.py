"""Chaos around the requests: Redis killed and restarted mid-run, and a hostile control-plane
client, both while streaming traffic flows through the supervisor."""

from __future__ import annotations

import functools
import json
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import trio
import trio_websocket

import rakka_trio as rk
from rakka_trio._control._protocol import TransitionFrame
from rakka_trio.testing import MockProvider, serve_mock_provider
from tests.conftest import RedisServer

pytestmark = pytest.mark.trio

KEY = "sk-mock-chaos-infra-0a1b2c3d"
TOKEN = "operator-token-chaos-93b1f0"
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(api_key=KEY, chunks=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def endpoint(mock: MockProvider, name: str, **limits: object) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name,
        provider="openai",
        base_url=mock.base_url_for("openai"),
        model="chaos",
        credential=rk.StaticCredential(KEY),
        limits=rk.RateLimits(**limits),  # type: ignore[arg-type]
        retry=rk.RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
    )


async def traffic(sup: rk.Supervisor, name: str, until: float, tally: Counter[str]) -> None:
    while trio.current_time() < until:
        try:
            async with sup.endpoint(name).stream(REQUEST) as chunks:
                async for _ in chunks:
                    pass
            tally["ok"] += 1
        except rk.RakkaError as exc:
            tally[type(exc).__name__] += 1
            await trio.sleep(0.01)


async def test_redis_restart_mid_run_keeps_serving_and_reconverges(
    mock: MockProvider, private_redis: RedisServer
) -> None:
    cfg = rk.SupervisorConfig(
        endpoints=[
            endpoint(
                mock,
                "shared",
                requests_per_minute=60_000,
                mode="approximate",
                redis_failure_policy="local_fallback",
            )
        ],
        redis_url=private_redis.url,
    )
    tally: Counter[str] = Counter()
    phases: list[int] = []
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup, sup.open_subscription(stats=False) as events:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(traffic, sup, "shared", start + 3.0, tally)
                await trio.sleep(0.7)
                phases.append(tally["ok"])
                await trio.to_thread.run_sync(private_redis.kill)  # every key lost
                await trio.sleep(0.8)
                phases.append(tally["ok"])
                assert sup.limiter("shared").statistics().fallback  # running on its own share
                await trio.to_thread.run_sync(private_redis.start)  # back, empty
                await trio.sleep(1.0)
                phases.append(tally["ok"])
            seen: Counter[str] = Counter()
            while True:
                try:
                    seen[type(events.receive_nowait()).__name__] += 1
                except trio.WouldBlock:
                    break
            limiter = sup.limiter("shared").statistics()
    # Served before, during and after the outage; never a limiter refusal or a hang.
    assert phases[0] > 0 and phases[1] > phases[0] and phases[2] > phases[1]
    assert set(tally) == {"ok"}
    assert seen["LimiterFallback"] >= 2  # entered and left the fallback
    assert seen["LimiterStateLost"] >= 1  # the restart was detected
    assert not limiter.fallback and limiter.redis_healthy


async def test_hostile_control_client_while_traffic_flows(mock: MockProvider) -> None:
    cfg = rk.SupervisorConfig(endpoints=[endpoint(mock, "a"), endpoint(mock, "b")])
    rng = random.Random(11)
    tally: Counter[str] = Counter()
    garbage_answers: Counter[str] = Counter()
    transitions: list[TransitionFrame] = []
    with trio.fail_after(30):
        async with rk.open_supervisor(cfg) as sup, trio.open_nursery() as services:
            srv = await services.start(
                functools.partial(rk.serve_control, sup, "127.0.0.1", 0, token=TOKEN)
            )

            async def hostile() -> None:
                frames: list[str | bytes] = [
                    "{not json",
                    "[]",
                    "null",
                    json.dumps({"type": "force_open", "id": 1, "endpoint": "a"}),  # no hello
                    json.dumps({"type": "hello", "token": "wrong", "client": "x"}),
                    b"\x00\xff binary",
                    "x" * 200_000,
                ]
                for _ in range(30):
                    try:
                        async with trio_websocket.open_websocket_url(srv.url) as ws:
                            await ws.send_message(rng.choice(frames))
                            # A wrong token waits out the peer's failed-hello delay (at most
                            # 2 s) before its answer; everything else is answered at once.
                            with trio.fail_after(5):
                                answer = json.loads(await ws.get_message())
                            garbage_answers[str(answer.get("code"))] += 1
                    except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError):
                        garbage_answers["closed"] += 1

            async def operator() -> None:
                async with rk.open_control_client(srv.url, token=TOKEN, client_name="op") as c:
                    await trio.sleep(0.5)
                    await c.force_open("a", duration=0.3, reason="chaos")
                    async for frame in c:
                        if isinstance(frame, TransitionFrame):
                            transitions.append(frame)
                            if frame.to_state == "half_open":
                                return

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "b"):
                    nursery.start_soon(traffic, sup, name, start + 2.0, tally)
                nursery.start_soon(hostile)
                nursery.start_soon(operator)
            stats = srv.statistics()
            services.cancel_scope.cancel()
    assert [t.to_state for t in transitions] == ["forced_open", "half_open"]
    assert tally["ok"] > 50
    assert set(tally) <= {"ok", "CircuitOpen"}  # only the operator's own force-open refused
    assert sum(garbage_answers.values()) == 30  # every hostile connection got an answer or a close
    # 30 hostile connections and one operator; only the operator's command was carried out.
    assert (stats.connections_total, stats.commands) == (31, 1)
    # Every wrong token was counted and refused.
    assert stats.failed_hellos == stats.refused_auth == garbage_answers["unauthorized"] > 0
