"""The demo runs its scripted incident end to end on real loopback sockets, and an operator can
act on it live through the control plane."""

from __future__ import annotations

import io

import pytest
import trio
from rich.console import Console

import rakka_trio as rk
from rakka_trio._control._protocol import TransitionFrame
from rakka_trio._demo import DemoReport, demo_main
from tests.conftest import RedisServer

pytestmark = pytest.mark.trio


async def test_demo_trips_fails_over_recovers_and_takes_operator_commands() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    ready = trio.Event()
    attach: dict[str, str] = {}
    report: list[DemoReport] = []
    seen: list[TransitionFrame] = []

    def on_ready(sup: rk.Supervisor, control: rk.ControlServer, token: str) -> None:
        attach.update(url=control.url, token=token)
        ready.set()

    async def run() -> None:
        report.append(
            await demo_main(duration=4.0, seed=3, concurrency=6, console=console, on_ready=on_ready)
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await ready.wait()
            async with rk.open_control_client(
                attach["url"], token=attach["token"], client_name="drill"
            ) as client:
                await trio.sleep(3.0)  # after the storm (20-50 %) is over and primary recovered
                ack = await client.force_open("backup", duration=0.4, reason="drill-7")
                assert ack.id is not None
                with trio.fail_after(5):
                    async for frame in client:
                        if isinstance(frame, TransitionFrame) and frame.endpoint == "backup":
                            seen.append(frame)
                            if frame.to_state == "half_open":
                                break

    (result,) = report
    text = out.getvalue()
    assert result.trips >= 1 and result.recoveries >= 1
    assert "primary: closed -> open" in text
    assert "half_open -> closed (probe_succeeded)" in text
    # Failover kept users served: only a small share of requests found both endpoints refusing.
    assert result.served > 20 * max(1, result.failed)
    assert result.outcomes["primary"]["circuit_open"] > 0
    assert result.outcomes["backup"].get("429", 0) + result.outcomes["backup"]["ok"] > 0
    assert result.tokens > 0
    assert result.cost > 0  # priced from the reported usage
    assert "fallbacks from one endpoint to the next: primary:CircuitOpen" in text
    # The operator's command reached the breaker and every watcher saw it at once.
    assert [f.to_state for f in seen][:2] == ["forced_open", "half_open"]
    assert "operator drill" in text and "force_open backup (drill-7)" in text
    assert "Final report" in text


async def test_demo_shares_its_limits_through_redis(redis_server: RedisServer) -> None:
    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    captured: list[rk.Supervisor] = []
    with trio.fail_after(30):
        report = await demo_main(
            duration=3.0,
            seed=4,
            concurrency=4,
            console=console,
            redis_url=redis_server.url,
            on_ready=lambda sup, control, token: captured.append(sup),
        )
    assert report.trips >= 1 and report.recoveries >= 1
    assert report.served > 20 * max(1, report.failed)
    (key,) = captured[0].limiter("primary").statistics().keys
    assert key.mode == "approximate"
    # Budget leased from Redis in the background: far fewer round trips than admissions.
    assert 0 < key.redis_round_trips < key.admitted / 5
