"""Acceptance: a 503 storm on ``primary`` (the mock provider's fault plan) with the demo's
deployment ``chat`` = [primary, backup], seen the way an operator sees it: the stats frames,
``rakka-trio state`` (table and ``--json``), the console's model and panels, and a console
that connects after the trip (real loopback servers, real clock, bounded by fail_after)."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

import rakka_trio as rk
from rakka_trio import _cli
from rakka_trio._control import _protocol as proto
from rakka_trio._demo import _DEMO_KEY, demo_config
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider
from rakka_trio_tui._incident_view import breakdown_lines, deployment_lines, trend_piece
from rakka_trio_tui._model import Connected, Model, reduce

from .control_helpers import TOKEN

pytestmark = pytest.mark.trio

HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])


async def _load(sup: rk.Supervisor, stop: trio.Event) -> None:
    chat = sup.deployment("chat")
    while not stop.is_set():
        try:
            await chat.complete(HI)
        except rk.RakkaError:
            await trio.sleep(0.01)


async def _stats_until(
    client: rk.ControlClient, ok: Callable[[proto.StatsFrame], bool]
) -> proto.StatsFrame:
    async for frame in client:
        if isinstance(frame, proto.StatsFrame) and ok(frame):
            return frame
    raise AssertionError("the feed ended")


def _ep(endpoints: list[proto.EndpointState], name: str) -> proto.EndpointState:
    return next(e for e in endpoints if e.name == name)


def _storm_visible(frame: proto.StatsFrame) -> bool:
    primary = _ep(frame.endpoints, "primary")
    chat = frame.deployments[0] if frame.deployments else None
    return (
        primary.trips >= 1
        and primary.recent is not None
        and primary.recent.attempts.get("5xx", 0.0) > 0
        and chat is not None
        and chat.success_rate is not None
        and any(f.from_endpoint == "primary" and f.to == "backup" for f in chat.fallbacks)
    )


async def _state(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await trio.to_thread.run_sync(functools.partial(_cli.main, list(argv)))
    out, _ = capsys.readouterr()
    return code, out


async def test_a_503_storm_on_primary_shows_everywhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAKKA_TOKEN", raising=False)
    mock = MockProvider(api_key=_DEMO_KEY, reply="fine", chunks=2)
    with trio.fail_after(60):
        async with trio.open_nursery() as services:
            await services.start(serve_mock_provider, mock)
            urls = {p: mock.base_url_for(p) for p in ("openai", "anthropic")}
            # The demo's endpoints, breaker and deployment; buckets of 2 s so the storm stays
            # inside the rates while the breaker holds primary open.
            cfg = attrs.evolve(
                demo_config(10.0, redis_url=None, base_urls=urls),
                stats_interval=0.05,
                rolling_bucket=2.0,
            )
            async with rk.open_supervisor(cfg) as sup:
                srv = await services.start(
                    functools.partial(rk.serve_control, sup, "127.0.0.1", 0, token=TOKEN)
                )
                stop = trio.Event()
                async with (
                    rk.open_control_client(srv.url, token=TOKEN) as early,
                    trio.open_nursery() as load,
                ):
                    mock.add_fault("openai", Fault.status(503, message="overloaded"))
                    for _ in range(4):
                        load.start_soon(_load, sup, stop)
                    # The stats feed: 5xx attempts per second on primary, fallbacks to backup.
                    frame = await _stats_until(early, _storm_visible)
                    primary = _ep(frame.endpoints, "primary")
                    assert primary.recent is not None and primary.trips >= 1
                    assert primary.recent.attempts["5xx"] > 0
                    assert sum(primary.recent.requests_series) > 0  # the sparkline's data
                    assert 0 < len(primary.recent.requests_series) <= 30
                    chat = (frame.deployments or [])[0]
                    assert chat.name == "chat" and chat.endpoints == ["primary", "backup"]
                    assert chat.success_rate is not None and chat.success_rate > 0.9
                    assert sum(chat.requests_series) > 0

                    # `state --json` and the table, while the storm goes on.
                    code, out = await _state(capsys, "state", srv.url, "--json", "--token", TOKEN)
                    assert code == 0
                    snap = json.loads(out)
                    by_name = {e["name"]: e for e in snap["endpoints"]}
                    assert by_name["primary"]["recent"]["attempts"]["5xx"] > 0
                    assert 0 < len(by_name["primary"]["recent"]["requests_series"]) <= 30
                    dep = snap["deployments"][0]
                    assert dep["success_rate"] > 0.9
                    assert any(
                        f["from"] == "primary" and f["to"] == "backup" for f in dep["fallbacks"]
                    )
                    code, out = await _state(capsys, "state", srv.url, "--token", TOKEN)
                    assert code == 0
                    recent_rows = out.split("per endpoint:")[1].split("per deployment:")[0]
                    primary_row = next(
                        line for line in recent_rows.splitlines() if line.startswith("primary")
                    )
                    assert " 5xx " in primary_row
                    deployment_rows = out.split("per deployment:")[1]
                    assert "primary->backup" in deployment_rows
                    assert any(c in deployment_rows for c in "▁▂▃▄▅▆▇█")

                    # A console started after the trip: the trip is in its log at once.
                    async with rk.open_control_client(srv.url, token=TOKEN) as late:
                        welcome = late.welcome
                    stop.set()
                assert welcome.history is not None
                trips = [
                    f
                    for f in welcome.history
                    if isinstance(f, proto.TransitionFrame)
                    and f.endpoint == "primary"
                    and f.to_state == "open"
                ]
                assert trips, "the trip is in the welcome's history"
                model, lines = reduce(Model(), Connected(welcome=welcome), time.monotonic())
                texts = [f"{line.endpoint} {line.text}" for line in lines]
                assert any(t.startswith("primary closed → open") for t in texts), texts
                assert texts[-1].startswith("None connected as operator")
                _console_shows_the_storm(model)
            services.cancel_scope.cancel()


def _text(lines: list[list[Any]]) -> str:
    return "\n".join("".join(text for text, _ in line) for line in lines)


def _console_shows_the_storm(model: Model) -> None:
    """The console's panels for the late console's model: 5xx attempts on primary, the
    deployment's success rate and its fallbacks, and sparklines."""
    view = model.endpoint("primary")
    assert view is not None and view.state.recent is not None
    breakdown = _text(breakdown_lines(model, "primary"))
    assert "attempts/s" in breakdown and " 5xx " in breakdown
    assert trend_piece(view.state)[0]  # a sparkline in the table's TREND column
    panel = _text(deployment_lines(model))
    assert "deployment chat" in panel and "success " in panel
    assert "primary→backup" in panel
