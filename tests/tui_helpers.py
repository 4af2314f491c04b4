"""Helpers for the TUI tests: protocol frame builders, a fake control server/client that the
real :class:`~rakka_trio_tui.ControlLink` connects to, a bounded runner for Textual apps and
a reader that turns an SVG screenshot back into lines of text.

Textual tests are plain (sync) functions that call :func:`run_app`, which runs the app under
``asyncio.run`` with an overall timeout; pytest-trio never sees them.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio
from textual.pilot import Pilot

from rakka_trio._control import _protocol as proto
from rakka_trio._control._client import (
    CloseInfo,
    ControlAuthError,
    ControlConnectionError,
)
from rakka_trio_tui._link import Command

if TYPE_CHECKING:
    from rakka_trio_tui import RakkaTui

Frame = proto.ServerFrame | proto.UnknownFrame

# --- frame builders -------------------------------------------------------------------------


def endpoint(name: str, state: str = "closed", **fields: Any) -> proto.EndpointState:
    """An endpoint as a snapshot reports it; unspecified figures are zero or null."""
    values: dict[str, Any] = {
        "name": name,
        "provider": "openai",
        "base_url": "http://127.0.0.1:1",
        "state": state,
        "consecutive_failures": 0,
        "failures": 0,
        "successes": 0,
        "rejected": 0,
        "trips": 0,
        "failure_rate": None,
        "calls_in_window": 0,
        "failures_in_window": 0,
        "open_for": None,
        "open_until_in": None,
        "open_until_wall": None,
        "until_reset": False,
        "forced_reason": None,
        "forced_by": None,
        "probes_in_flight": 0,
    }
    values.update(fields)
    return proto.EndpointState(**values)


def snapshot(
    *endpoints: proto.EndpointState,
    node_id: str = "node-1",
    deployments: tuple[proto.DeploymentState, ...] | None = None,
) -> proto.Snapshot:
    """A snapshot of ``endpoints`` (and ``deployments``, when given)."""
    return proto.Snapshot(
        node_id=node_id,
        wall=1_700_000_000.0,
        endpoints=list(endpoints),
        deployments=None if deployments is None else list(deployments),
    )


def welcome(
    role: str,
    *endpoints: proto.EndpointState,
    stats_interval: float = 1.0,
    deployments: tuple[proto.DeploymentState, ...] | None = None,
    history: list[proto.HistoryFrame] | None = None,
) -> proto.WelcomeFrame:
    """The server's greeting with ``role``, a first snapshot and (optionally) history."""
    return proto.WelcomeFrame(
        protocol=1,
        role=role,
        server="rakka-trio/test",
        stats_interval=stats_interval,
        snapshot=snapshot(*endpoints, deployments=deployments),
        history=history,
    )


def stats(*endpoints: proto.EndpointState, wall: float = 1_700_000_001.0) -> proto.StatsFrame:
    """A periodic stats frame."""
    return proto.StatsFrame(node_id="node-1", wall=wall, endpoints=list(endpoints))


def transition(
    name: str,
    from_state: str,
    to_state: str,
    *,
    cause: str = "failure_threshold",
    wall: float = 1_700_000_002.0,
    **fields: Any,
) -> proto.TransitionFrame:
    """A breaker transition of ``name``."""
    values: dict[str, Any] = {
        "consecutive_failures": 0,
        "failure_rate": None,
        "calls_in_window": 0,
        "trips": 0,
        "open_until_in": None,
        "open_until_wall": None,
        "until_reset": False,
        "actor": None,
        "reason": None,
    }
    values.update(fields)
    return proto.TransitionFrame(
        wall=wall, endpoint=name, from_state=from_state, to_state=to_state, cause=cause, **values
    )


DEFAULT_ENDPOINTS = (
    endpoint("alpha", provider="openai"),
    endpoint("beta", provider="anthropic"),
    endpoint("gamma", provider="openai"),
)

_ACK_STATE = {"force_open": "forced_open", "disable": "disabled", "reset": "closed"}

# --- a fake control server ------------------------------------------------------------------


class FakeClient:
    """One fake connection: frames come from :meth:`FakeServer.push`; commands are
    recorded and acknowledged like a real server would (viewers get ``forbidden``)."""

    def __init__(self, server: FakeServer, greeting: proto.WelcomeFrame) -> None:
        self.server = server
        self.welcome = greeting
        self.closed: CloseInfo | None = None
        self.token = trio.lowlevel.current_trio_token()
        self._send, self._recv = trio.open_memory_channel[Frame](math.inf)
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        """A fresh command id."""
        return next(self._ids)

    async def send_command(self, command: Command) -> proto.AckFrame:
        """Record ``command`` and answer it."""
        await trio.lowlevel.checkpoint()
        if self.closed is not None:
            raise ControlConnectionError("connection lost")
        self.server.sent.append(command)
        if isinstance(command, proto.GetState):
            return proto.AckFrame(
                id=command.id, command="get_state", snapshot=snapshot(*self.server.endpoints)
            )
        if self.welcome.role != "operator":
            raise ControlAuthError("viewers may not send commands", code="forbidden")
        return proto.AckFrame(
            id=command.id,
            command=command.TYPE,
            endpoint=command.endpoint,
            state=_ACK_STATE[command.TYPE],
        )

    async def receive(self) -> Frame:
        """The next pushed frame; EndOfChannel once the server dropped us."""
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            self.closed = CloseInfo(1001, "server going away")
            raise

    def deliver(self, frame: Frame) -> None:
        """Queue ``frame`` (inside the Trio run)."""
        self._send.send_nowait(frame)

    def hang_up(self) -> None:
        """End the connection (inside the Trio run)."""
        self._send.close()


class FakeServer:
    """Stands in for a control server: :meth:`connect` is a connector for the link.

    ``refuse`` (a message) makes connection attempts fail as if the server were down;
    ``reject_token`` makes them fail authentication. ``sent`` records every command.
    ``stats_interval`` is what the welcome promises (the link treats a connection silent for
    several intervals as dead; the fake sends nothing on its own).
    :meth:`push` and :meth:`drop` may be called from the asyncio side (they hop into the
    Trio run through its token).
    """

    def __init__(
        self,
        *,
        role: str = "operator",
        endpoints: tuple[proto.EndpointState, ...] | None = None,
        stats_interval: float = 1.0,
        deployments: tuple[proto.DeploymentState, ...] | None = None,
        history: list[proto.HistoryFrame] | None = None,
    ) -> None:
        self.role = role
        self.deployments = deployments
        self.history = history
        self.stats_interval = stats_interval
        self.endpoints = list(DEFAULT_ENDPOINTS if endpoints is None else endpoints)
        self.sent: list[Command] = []
        self.refuse: str | None = None
        self.reject_token = False
        self.attempts = 0
        self.connections = 0
        self.client: FakeClient | None = None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[FakeClient]:
        """Open one fake connection (the link's connector)."""
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        if self.reject_token:
            raise ControlAuthError("ws://fake: token not accepted", code="unauthorized")
        if self.refuse is not None:
            raise ControlConnectionError(self.refuse, code="connect_failed")
        self.connections += 1
        greeting = welcome(
            self.role,
            *self.endpoints,
            stats_interval=self.stats_interval,
            deployments=self.deployments,
            history=self.history,
        )
        client = FakeClient(self, greeting)
        self.client = client
        try:
            yield client
        finally:
            self.client = None
            if client.closed is None:
                client.closed = CloseInfo(1000, None)

    def commands(self) -> list[Command]:
        """Commands other than ``get_state`` (which the link sends on its own)."""
        return [c for c in self.sent if not isinstance(c, proto.GetState)]

    def push(self, *frames: Frame) -> None:
        """Send frames to the current connection (thread-safe)."""
        client = self.client
        assert client is not None, "no connection to push to"
        for frame in frames:
            client.token.run_sync_soon(client.deliver, frame)

    def drop(self) -> None:
        """Hang up the current connection (thread-safe)."""
        client = self.client
        assert client is not None, "no connection to drop"
        client.token.run_sync_soon(client.hang_up)


# --- running apps ---------------------------------------------------------------------------


@attrs.define
class FakeClock:
    """A monotonic clock the test moves by hand (countdowns become deterministic)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def run_app(
    app: RakkaTui,
    scenario: Callable[[Pilot[int]], Awaitable[None]],
    *,
    size: tuple[int, int] = (120, 32),
    timeout: float = 20.0,
) -> None:
    """Run ``app`` headless, drive it with ``scenario`` and shut it down, all within
    ``timeout`` seconds; then check the Trio link was stopped with it."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(asyncio.wait_for(main(), timeout))
    assert not app.link_running, "the Trio link outlived the app"


async def wait_until(
    pilot: Pilot[int], condition: Callable[[], bool], what: str, within: float = 5.0
) -> None:
    """Let the app run until ``condition()`` holds (polled; bounded by ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


async def connected(pilot: Pilot[int], app: RakkaTui) -> None:
    """Wait until the app shows a greeted connection."""
    await wait_until(pilot, lambda: app.model.link.status.value == "connected", "connection")


def row_names(app: RakkaTui) -> list[str]:
    """Endpoint names in the table as drawn."""
    return [row.key for row in app.visible_rows()]


def row_text(app: RakkaTui, name: str) -> list[str]:
    """The cells of ``name``'s row as text."""
    for row in app.visible_rows():
        if row.key == name:
            return [cell.text for cell in row.cells]
    raise AssertionError(f"no row {name!r}")


# --- reading SVG screenshots ----------------------------------------------------------------

_SVG = "{http://www.w3.org/2000/svg}"
_LINE = re.compile(r"-line-(\d+)\)")


def screenshot_lines(svg: str, width: int) -> list[str]:
    """The terminal text of a Textual SVG screenshot, one string per line.

    Textual writes each run of same-styled text as a ``<text>`` element clipped to its
    line, at ``x`` = column * cell width; the characters are put back on a grid.
    """
    root = ET.fromstring(svg)
    cells: dict[int, dict[int, str]] = {}
    cell_width: float | None = None
    for node in root.iter(f"{_SVG}text"):
        clip = node.get("clip-path") or ""
        match = _LINE.search(clip)
        text = html.unescape(node.text or "").replace("\xa0", " ").replace("\n", "")
        if match is None or not text:
            continue
        length = float(node.get("textLength") or 0)
        if cell_width is None and length:
            cell_width = length / len(text)
        column = round(float(node.get("x") or 0) / (cell_width or 1))
        line = cells.setdefault(int(match.group(1)), {})
        for offset, char in enumerate(text):
            line[column + offset] = char
    if not cells:
        return []
    lines = []
    for number in range(max(cells) + 1):
        row = cells.get(number, {})
        lines.append("".join(row.get(col, " ") for col in range(width)).rstrip())
    return lines
