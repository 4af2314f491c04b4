"""The console's fleet mode: pure rows and reducer, then the App against real fleet nodes.

The App tests run two fleet nodes (supervisors with their own fleet links) and a control
server on one of them in a thread of their own (own ``trio.run``), a real redis-server, and
the TUI in this thread (Trio in guest mode on Textual's asyncio loop), bounded by ``run_app``.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import re
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import trio
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog

import rakka_trio as rk
from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff, RakkaTui
from rakka_trio_tui._fleet import FleetNodesScreen, FleetTable, fleet_rows, node_rows
from rakka_trio_tui._model import CommandDone, CommandRequest, Connected, Model, reduce
from rakka_trio_tui._screens import CommandScreen, ConfirmScreen
from tests.conftest import RedisServer
from tests.control_helpers import TOKEN
from tests.test_fleet_redis import fleet_name, node_config, registered
from tests.tui_helpers import connected, run_app, wait_until

T = TypeVar("T")
FAST = Backoff(initial=0.05, maximum=0.2)
WALL = 1_800_000_000.0


# --- pure -------------------------------------------------------------------------------------


def node_figures(node: str, state: str, **fields: Any) -> proto.FleetNodeEndpointState:
    values: dict[str, Any] = {
        "node": node, "state": state, "stale": False, "failure_rate": None,
        "consecutive_failures": 0, "trips": 0, "open_until_wall": None, "until_reset": False,
        "forced_by": None, "forced_reason": None, "requests": 10, "errors": 0, "rejected": 0,
        "requests_per_second": 2.0, "errors_per_second": 0.0, "in_flight": 1, "queue_depth": 0,
        "limiter_utilization": None, "latency_p50": 0.1, "latency_p95": 0.2,
        "latency_p99": 0.3, "cost": 0.0,
    }  # fmt: skip
    values.update(fields)
    return proto.FleetNodeEndpointState(**values)


def fleet_endpoint(
    name: str, per_node: list[proto.FleetNodeEndpointState], **fields: Any
) -> proto.FleetEndpointState:
    states: dict[str, int] = {}
    for fig in per_node:
        states[fig.state] = states.get(fig.state, 0) + 1
    open_on = sum(states.get(s, 0) for s in ("open", "forced_open"))
    values: dict[str, Any] = {
        "name": name,
        "summary": f"open on {open_on}/{len(per_node)}" if open_on
        else f"closed on {states.get('closed', 0)}/{len(per_node)}",
        "nodes": len(per_node), "open_on": open_on, "states": states, "requests": 30,
        "errors": 0, "rejected": 0, "requests_per_second": 6.0, "errors_per_second": 0.0,
        "error_rate": None, "in_flight": 3, "queue_depth": 0, "latency_p50": 0.1,
        "latency_p95": 0.2, "latency_p99_max": 0.4, "cost": 0.0, "override": None,
        "per_node": per_node,
    }  # fmt: skip
    values.update(fields)
    return proto.FleetEndpointState(**values)


def fleet_snapshot(*endpoints: proto.FleetEndpointState) -> proto.FleetSnapshot:
    return proto.FleetSnapshot(
        fleet="prod", wall=WALL, link_up=True, link_down_since=None, link_status="up",
        fresh=True, nodes=[], endpoints=list(endpoints),
    )  # fmt: skip


def test_fleet_rows_show_state_counts_sums_and_the_override() -> None:
    override = proto.FleetOverrideState(
        id="ab" * 8, command="force_open", issued_at=WALL - 10, until=WALL + 290,
        duration=300.0, reason="incident-42", actor="alice", origin="console",
    )  # fmt: skip
    primary = fleet_endpoint(
        "primary",
        [node_figures(f"n{i}", "forced_open") for i in range(3)],
        override=override,
        rejected=57,
    )
    backup = fleet_endpoint("backup", [node_figures("n0", "closed"), node_figures("n1", "open")])
    rows = fleet_rows(fleet_snapshot(primary, backup), "", WALL)
    cells = {row.key: [cell.text for cell in row.cells] for row in rows}
    assert cells["primary"][:3] == ["primary", "open on 3/3", "3 forced_open"]
    assert cells["primary"][8] == "57"
    assert cells["primary"][9] == "force_open 4m50s by alice: incident-42"
    assert cells["backup"][1:3] == ["open on 1/2", "1 closed, 1 open"]
    assert [row.key for row in fleet_rows(fleet_snapshot(primary, backup), "forced", WALL)] == [
        "primary"
    ]


def test_node_rows_list_each_node_with_its_countdown_and_note() -> None:
    ep = fleet_endpoint(
        "primary",
        [
            node_figures("n0", "forced_open", open_until_wall=WALL + 65, forced_by="fleet:a",
                         forced_reason="drill"),
            node_figures("n1", "disabled", until_reset=True, stale=True),
            node_figures("n2", "closed", errors_per_second=1.5),
        ],
    )  # fmt: skip
    rows = [[cell.text for cell in row] for row in node_rows(ep, WALL)]
    assert rows[0][:3] == ["n0", "forced_open", "1m05s"] and rows[0][8] == "drill by fleet:a"
    assert rows[1][:3] == ["n1 (stale)", "disabled", "until reset"]
    assert rows[2][1] == "closed" and rows[2][4] == "1.5"


def test_the_model_keeps_the_fleet_and_logs_fleet_acks_with_the_missing_nodes() -> None:
    snapshot = fleet_snapshot(fleet_endpoint("a", [node_figures("n0", "closed")]))
    greeting = proto.WelcomeFrame(
        protocol=1, role="operator", server="s", stats_interval=1.0,
        snapshot=proto.Snapshot(node_id="turbine", wall=WALL, endpoints=[]),
        scope="fleet", fleet=snapshot,
    )  # fmt: skip
    model, _ = reduce(Model(), Connected(welcome=greeting), 0.0)
    assert model.fleet == snapshot and model.endpoints == ()
    request = CommandRequest(kind="force_open", endpoint="a", duration=60.0, scope="fleet")
    assert request.describe() == "fleet force_open a for 1m00s"
    done = CommandDone(request=request, ok=True, nodes_acked=("n0", "n1"), nodes_missing=("n2",))
    _, lines = reduce(model, done, 1.0)
    assert lines[0].text == (
        "fleet force_open a: acked by 2/3 nodes; missing: n2 (they apply it when back)"
    )
    assert lines[0].style == "bold red"
    transition = proto.TransitionFrame(
        wall=WALL, endpoint="a", from_state="closed", to_state="open", cause="failure_rate",
        consecutive_failures=0, failure_rate=0.6, calls_in_window=20, trips=1,
        open_until_in=30.0, open_until_wall=WALL + 30, until_reset=False, actor=None,
        reason=None, node="n1",
    )  # fmt: skip
    same, lines = reduce(model, transition, 2.0)
    assert lines[0].endpoint == "n1: a" and same.fleet == snapshot


# --- the App against real fleet nodes -------------------------------------------------------


class FleetThread:
    """Two fleet nodes and a control server on the first, in a thread (own ``trio.run``)."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self.token: trio.lowlevel.TrioToken | None = None
        self.sups: list[rk.Supervisor] = []
        self._nursery: trio.Nursery | None = None
        self.url = ""

    def __enter__(self) -> FleetThread:
        self._thread.start()
        failure = self._ready.get(timeout=20)
        if failure is not None:
            raise failure
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.token is not None and self._nursery is not None:
            trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(timeout=20)
        assert not self._thread.is_alive(), "the fleet thread did not stop"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test thread, which re-raises it
            self._ready.put(exc)

    async def _main(self) -> None:
        name = fleet_name()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in ("n0", "n1"):
                config = node_config(self._url, name, node, ["alpha", "beta"])
                self.sups.append(await nursery.start(rk.run_supervisor, config))
            await registered(self.sups[0].fleet, 2)
            srv = await nursery.start(
                functools.partial(rk.serve_control, self.sups[0], "127.0.0.1", 0, token=TOKEN)
            )
            self.url = srv.url
            self.token = trio.lowlevel.current_trio_token()
            self._ready.put(None)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.token is not None
        return trio.from_thread.run_sync(functools.partial(fn, *args), trio_token=self.token)

    def states(self, endpoint: str) -> list[str]:
        return self.call(lambda: [s.breaker(endpoint).state.value for s in self.sups])


def fleet_cells(app: RakkaTui, name: str) -> list[str]:
    fleet = app.model.fleet
    assert fleet is not None
    for row in fleet_rows(fleet, "", time.time()):
        if row.key == name:
            return [cell.text for cell in row.cells]
    raise AssertionError(f"no fleet row {name!r}")


def log_text(app: RakkaTui) -> str:
    return "\n".join(strip.text for strip in app.query_one("#log", RichLog).lines)


def test_fleet_mode_shows_every_node_and_enter_lists_each_nodes_state(
    redis_server: RedisServer,
) -> None:
    with FleetThread(redis_server.url) as fleet:
        app = RakkaTui(fleet.url, token=TOKEN, backoff=FAST, scope="fleet")

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            assert app.model.fleet is not None and app.scope == "fleet"
            table = app.query_one("#fleet", FleetTable)
            assert table.display and not app.query_one("#endpoints", DataTable).display
            await wait_until(pilot, lambda: table.row_count == 2, "the fleet table")
            assert fleet_cells(app, "alpha")[1] == "closed on 2/2"
            await asyncio.to_thread(
                fleet.call, lambda: fleet.sups[1].force_open("alpha", 60.0, "n1 only")
            )
            await wait_until(
                pilot, lambda: fleet_cells(app, "alpha")[1] == "open on 1/2", "the next stats"
            )
            assert app.selected_endpoint() == "alpha"
            await pilot.press("enter")
            screen = app.screen
            assert isinstance(screen, FleetNodesScreen) and screen.endpoint == "alpha"
            rows = [[cell.text for cell in row] for row in screen.rows()]
            assert [(r[0], r[1]) for r in rows] == [("n0", "closed"), ("n1", "forced_open")]
            assert rows[1][8] == "n1 only by api"
            await pilot.press("escape")
            assert not isinstance(app.screen, FleetNodesScreen)

        run_app(app, scenario, timeout=40)


def test_fleet_mode_force_open_and_reset_act_on_every_node_and_log_the_acks(
    redis_server: RedisServer,
) -> None:
    with FleetThread(redis_server.url) as fleet:
        # Node scope first: s switches to the fleet.
        app = RakkaTui(fleet.url, token=TOKEN, client_name="ops", backoff=FAST)

        async def scenario(pilot: Pilot[int]) -> None:
            await connected(pilot, app)
            assert app.model.fleet is None and app.scope == "node"
            await pilot.press("s")
            await wait_until(pilot, lambda: app.model.fleet is not None, "the fleet welcome")
            table = app.query_one("#fleet", FleetTable)
            await wait_until(pilot, lambda: table.row_count == 2, "the fleet table")
            await pilot.press("f")
            assert isinstance(app.screen, CommandScreen) and app.screen.endpoint == "alpha"
            await pilot.press(*"5m", "enter", *"drill-7", "enter")
            await wait_until(pilot, lambda: "acked by 2/2 nodes" in log_text(app), "the fleet ack")
            assert await asyncio.to_thread(fleet.states, "alpha") == ["forced_open"] * 2
            assert await asyncio.to_thread(fleet.states, "beta") == ["closed"] * 2
            assert "fleet force_open alpha for 5m00s (reason: drill-7)" in log_text(app)
            await wait_until(
                pilot, lambda: fleet_cells(app, "alpha")[1] == "open on 2/2", "the stats"
            )
            assert re.match(r"force_open (5m00s|4m5\ds) by ops@", fleet_cells(app, "alpha")[9])
            await pilot.press("r")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_until(
                pilot, lambda: log_text(app).count("acked by 2/2 nodes") == 2, "the reset ack"
            )
            assert await asyncio.to_thread(fleet.states, "alpha") == ["closed"] * 2
            # And back to this node's own endpoints.
            await pilot.press("s")
            await wait_until(pilot, lambda: len(app.model.endpoints) == 2, "the node welcome")
            assert app.model.fleet is None and app.query_one("#endpoints", DataTable).display

        run_app(app, scenario, timeout=40)
