"""The TUI's Trio link on its own (no Textual): reconnect with backoff, commands, refreshes.

Deterministic time: MockClock jumps over the backoff sleeps.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from rakka_trio._control import _protocol as proto
from rakka_trio_tui import Backoff, ControlLink
from rakka_trio_tui._model import (
    CommandDone,
    CommandRequest,
    Connected,
    Connecting,
    Disconnected,
    Input,
    SnapshotReceived,
)

from .tui_helpers import FakeServer, endpoint, stats

pytestmark = pytest.mark.trio


class Recorder:
    """Collects what the link emits and lets a test wait for a condition on it."""

    def __init__(self) -> None:
        self.events: list[Input] = []
        self._changed = trio.Event()

    def __call__(self, event: Input) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: type[Input] | None = None, count: int = 1) -> None:
        """Wait until ``count`` events of type ``predicate`` (any type if None) arrived."""
        while sum(1 for e in self.events if predicate is None or isinstance(e, predicate)) < count:
            await self._changed.wait()

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class Answers(list[CommandDone]):
    """Collects command answers (the ``done`` callback) and lets a test wait for them."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def __call__(self, done: CommandDone) -> None:
        self.append(done)
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, count: int) -> None:
        """Wait until ``count`` answers arrived."""
        while len(self) < count:
            await self._changed.wait()


async def test_reconnects_with_backoff_until_the_server_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    server.refuse = "could not connect: connection refused"
    emit = Recorder()
    link = ControlLink(server.connect, emit, backoff=Backoff(initial=1.0, maximum=4.0))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Disconnected, count=4)
            server.refuse = None
            await emit.until(Connected)
            assert link.connected
            nursery.cancel_scope.cancel()
    assert emit.kinds()[:9] == [
        "Connecting",
        "Disconnected",
        "Connecting",
        "Disconnected",
        "Connecting",
        "Disconnected",
        "Connecting",
        "Disconnected",
        "Connecting",
    ]
    drops = [e for e in emit.events if isinstance(e, Disconnected)]
    assert [d.attempt for d in drops] == [1, 2, 3, 4]
    assert all(d.reason == "could not connect: connection refused" for d in drops)
    bounds = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.0, 4.0)]
    for drop, (low, high) in zip(drops, bounds, strict=True):
        assert drop.retry_in is not None and low <= drop.retry_in <= high
    attempts = [e.attempt for e in emit.events if isinstance(e, Connecting)]
    assert attempts[:5] == [0, 1, 2, 3, 4]


async def test_frames_are_relayed_and_a_lost_connection_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer()
    emit = Recorder()
    link = ControlLink(server.connect, emit)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            frame = stats(endpoint("a"))
            server.push(frame)
            await emit.until(proto.StatsFrame)
            assert frame in emit.events
            server.drop()
            await emit.until(Connected, count=2)
            nursery.cancel_scope.cancel()
    drop = next(e for e in emit.events if isinstance(e, Disconnected))
    assert drop.reason == "connection lost: closed by the server (code 1001: server going away)"
    assert drop.attempt == 1
    assert server.connections == 2


async def test_a_healthy_connection_resets_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer(stats_interval=3600)  # no stats due: silence is fine here
    emit = Recorder()
    link = ControlLink(server.connect, emit)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            server.drop()  # a connection that died at once: backoff keeps growing
            await emit.until(Connected, count=2)
            server.drop()
            await emit.until(Connected, count=3)
            await trio.sleep(60)  # this one was healthy for a minute
            server.drop()
            await emit.until(Connected, count=4)
            nursery.cancel_scope.cancel()
    assert [e.attempt for e in emit.events if isinstance(e, Disconnected)] == [1, 2, 1]


async def test_a_silent_connection_is_dropped_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Stats every second: 15 s without any frame means the peer is gone (a vanished host
    # leaves the TCP connection open), so the link reconnects instead of waiting forever.
    server = FakeServer(stats_interval=1.0)
    emit = Recorder()
    link = ControlLink(server.connect, emit)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            for _ in range(4):  # a frame every 10 s keeps it alive
                await trio.sleep(10)
                assert server.client is not None
                server.client.deliver(stats(endpoint("a")))
            assert server.connections == 1
            await emit.until(Connected, count=2)
            nursery.cancel_scope.cancel()
    (drop,) = [e for e in emit.events if isinstance(e, Disconnected)]
    assert drop.reason == "no frame from the server for 15s (stats are due every 1s)"
    assert server.connections == 2


async def test_a_refused_token_ends_the_link() -> None:
    server = FakeServer()
    server.reject_token = True
    emit = Recorder()
    with trio.fail_after(10):
        await ControlLink(server.connect, emit).run()
    assert emit.kinds() == ["Connecting", "Disconnected"]
    final = emit.events[-1]
    assert isinstance(final, Disconnected) and final.retry_in is None
    assert server.attempts == 1


async def test_commands_are_answered_once_each() -> None:
    server = FakeServer()
    emit = Recorder()
    link = ControlLink(server.connect, emit)
    answers = Answers()
    request = CommandRequest(kind="force_open", endpoint="alpha", duration=60.0, reason="drill")
    with trio.fail_after(10):
        # Before the link runs there is nothing to send on.
        link.submit(request, answers)
        assert answers == [CommandDone(request=request, ok=False, error="not connected")]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            link.submit(request, answers)
            link.submit(CommandRequest(kind="reset", endpoint="alpha"), answers)
            link.submit(CommandRequest(kind="disable", endpoint="beta"), answers)
            await answers.until(4)
            nursery.cancel_scope.cancel()
    # The commands run as concurrent tasks: compare without order.
    assert sorted((a.request.kind, a.ok, a.state or "") for a in answers[1:]) == [
        ("disable", True, "disabled"),
        ("force_open", True, "forced_open"),
        ("reset", True, "closed"),
    ]
    sent = server.commands()
    assert len({c.id for c in sent}) == 3  # one fresh id each
    assert sorted((attrs.evolve(c, id=0) for c in sent), key=lambda c: c.TYPE) == [
        proto.Disable(id=0, endpoint="beta", duration=None, reason=None),
        proto.ForceOpen(id=0, endpoint="alpha", duration=60.0, reason="drill"),
        proto.Reset(id=0, endpoint="alpha", reason=None),
    ]


async def test_refused_and_invalid_commands_report_errors() -> None:
    server = FakeServer(role="viewer")
    emit = Recorder()
    scrubbed: list[str] = []

    def scrub(text: str) -> str:
        scrubbed.append(text)
        return text.replace("viewers", "<scrubbed>")

    link = ControlLink(server.connect, emit, scrub=scrub)
    answers = Answers()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            link.submit(CommandRequest(kind="reset", endpoint="a"), answers)
            link.submit(CommandRequest(kind="reset", endpoint="a", reason="\x1b"), answers)
            link.submit(CommandRequest(kind="explode", endpoint="a"), answers)
            await answers.until(3)
            nursery.cancel_scope.cancel()
    errors = sorted(a.error or "" for a in answers)
    assert not any(a.ok for a in answers)
    assert any("<scrubbed> may not send commands" in e for e in errors)
    assert any("reason" in e and "control" in e for e in errors)
    assert any("unknown command kind" in e for e in errors)
    assert len(server.commands()) == 1  # only the well-formed one reached the server


async def test_lagged_or_new_endpoint_asks_for_the_whole_state() -> None:
    server = FakeServer()
    emit = Recorder()
    link = ControlLink(server.connect, emit)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await emit.until(Connected)
            server.endpoints = [endpoint("new")]
            server.push(proto.LaggedFrame(wall=1.0, dropped=3))
            await emit.until(SnapshotReceived)
            server.push(proto.EndpointAddedFrame(wall=2.0, endpoint="newer"))
            await emit.until(SnapshotReceived, count=2)
            nursery.cancel_scope.cancel()
    snap = next(e for e in emit.events if isinstance(e, SnapshotReceived))
    assert [ep.name for ep in snap.snapshot.endpoints] == ["new"]
    assert [type(c).__name__ for c in server.sent] == ["GetState", "GetState"]
