"""The console's incident view: the deployment-aware warning before forcing open the last
endpoint a deployment can use, the history a late console shows, and the breakdown panel
following the selected endpoint (pure model tests, then Textual pilots run under asyncio)."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff, RakkaTui
from rakka_trio_tui._incident import IncidentPanel
from rakka_trio_tui._incident_view import last_serving_warning
from rakka_trio_tui._model import Connected, Model, reduce
from rakka_trio_tui._screens import ConfirmScreen

from .tui_helpers import (
    FakeServer,
    connected,
    endpoint,
    run_app,
    transition,
    wait_until,
    welcome,
)

FAST = Backoff(initial=0.01, maximum=0.02)


def deployment(name: str, *endpoints: str, serving: int | None = None) -> proto.DeploymentState:
    return proto.DeploymentState(
        name=name,
        strategy="ordered",
        endpoints=list(endpoints),
        serving=serving,
        window=10.0,
        bucket=10.0,
        requests={},
        success_rate=None,
        fallbacks=[],
        requests_series=[],
        errors_series=[],
    )


ENDPOINTS = (
    endpoint("a", state="open", open_until_in=30.0),
    endpoint("b"),
    endpoint("c"),
)
DEPLOYMENTS = (deployment("chat", "a", "b", serving=1), deployment("batch", "c", serving=1))


def model_with(*deployments: proto.DeploymentState) -> Model:
    frame = welcome("operator", *ENDPOINTS, deployments=deployments or None)
    return reduce(Model(), Connected(welcome=frame), 0.0)[0]


def test_the_warning_names_the_deployment_left_with_nothing() -> None:
    model = model_with(*DEPLOYMENTS)
    # b is the last of chat's endpoints that serves, although c (another deployment's)
    # still serves: forcing b open leaves chat nothing.
    assert model.deployments_left_without("b") == ("chat",)
    warning = last_serving_warning(model, "b")
    assert warning is not None
    assert warning[0] == "Warning: b is the last endpoint serving deployment chat"
    assert "leaves chat nothing to serve or fail over to" in warning[1]
    assert last_serving_warning(model, "c") is not None  # batch has only c
    assert last_serving_warning(model, "a") is None  # already open: nothing changes


def test_no_warning_when_the_deployment_has_another_endpoint_serving() -> None:
    model = model_with(deployment("chat", "a", "b", "c", serving=2))
    assert model.deployments_left_without("b") == ()
    assert last_serving_warning(model, "b") is None
    # An endpoint in no deployment serves nobody's fallback chain.
    model = model_with(deployment("chat", "a", "b", serving=1))
    assert last_serving_warning(model, "c") is None


def test_without_deployments_every_endpoint_of_the_server_counts() -> None:
    model = model_with()
    assert model.deployments == ()
    assert last_serving_warning(model, "b") is None  # c still serves
    frame = welcome("operator", endpoint("a", state="open"), endpoint("b"))
    alone = reduce(Model(), Connected(welcome=frame), 0.0)[0]
    warning = last_serving_warning(alone, "b")
    assert warning is not None and warning[0] == "Warning: b is the last endpoint serving"


def test_a_late_console_logs_the_history_once() -> None:
    trip = transition("a", "closed", "open", wall=1_700_000_010.0, trips=1)
    command = proto.CommandFrame(
        wall=1_700_000_020.0,
        endpoint="c",
        command="force_open",
        actor="ops@127.0.0.1:1",
        reason="drill",
        duration=60.0,
    )
    first = welcome("operator", *ENDPOINTS, history=[trip, command])
    model, lines = reduce(Model(), Connected(welcome=first), 0.0)
    assert [line.endpoint for line in lines] == ["a", "c", None]
    assert lines[0].text.startswith("closed → open  (failure_threshold)")
    assert lines[1].text.startswith("force_open by ops@127.0.0.1:1 for 1m00s")
    assert lines[2].text.startswith("connected as operator")
    # Reconnected: the same history again, plus one newer event; only that one is logged.
    later = transition("a", "open", "half_open", cause="timer", wall=1_700_000_030.0)
    second = welcome("operator", *ENDPOINTS, history=[trip, command, later])
    _, lines = reduce(model, Connected(welcome=second), 1.0)
    assert [(line.endpoint, line.text.split("  ")[0]) for line in lines[:-1]] == [
        ("a", "open → half_open")
    ]


def _app(server: FakeServer) -> RakkaTui:
    return RakkaTui("ws://127.0.0.1:8765", connect=server.connect, backoff=FAST)


def test_forcing_open_chats_last_endpoint_asks_twice_naming_the_deployment() -> None:
    server = FakeServer(endpoints=ENDPOINTS, deployments=DEPLOYMENTS)
    app = _app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        app.query_one("#endpoints", DataTable).move_cursor(row=1)
        await pilot.pause()
        assert app.selected_endpoint() == "b"
        await pilot.press("f", *"5m", "enter", *"drill", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        assert "last endpoint serving deployment chat" in app.screen.title_text
        await pilot.press("y")
        assert isinstance(app.screen, ConfirmScreen)  # asked a second time
        await pilot.press("y")
        await wait_until(pilot, lambda: len(server.commands()) == 1, "the command")
        assert server.commands() == [
            proto.ForceOpen(id=1, endpoint="b", duration=300.0, reason="drill")
        ]

    run_app(app, scenario)


def test_the_panel_follows_the_selected_endpoint() -> None:
    recent = proto.RecentState(
        window=10.0,
        bucket=10.0,
        requests={"ok": 3.0},
        attempts={"ok": 3.0, "5xx": 1.5},
        retries=0.5,
        error_rate=0.0,
        p50=0.1,
        p95=0.2,
        p99=0.3,
        requests_series=[1, 2, 3],
        errors_series=[0, 0, 0],
    )
    server = FakeServer(
        endpoints=(endpoint("a", recent=recent), endpoint("b")),
        deployments=(deployment("chat", "a", "b", serving=2),),
    )
    app = _app(server)

    def panel() -> str:
        return str(app.query_one(IncidentPanel).render())

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await wait_until(pilot, lambda: "5xx 1.5" in panel(), "a's breakdown")
        assert "deployment chat  serving 2/2" in panel()
        app.query_one("#endpoints", DataTable).move_cursor(row=1)
        await wait_until(pilot, lambda: "5xx" not in panel(), "b selected")
        assert "deployment chat" in panel()  # b reports no rates: only the deployments

    run_app(app, scenario)


@pytest.mark.parametrize("deployments", [None, ()])
def test_an_older_server_shows_no_panel(
    deployments: tuple[proto.DeploymentState, ...] | None,
) -> None:
    server = FakeServer(endpoints=(endpoint("a"),), deployments=deployments)
    app = _app(server)

    async def scenario(pilot: Pilot[int]) -> None:
        await connected(pilot, app)
        await pilot.pause()
        assert not app.query_one(IncidentPanel).display

    run_app(app, scenario)
