"""The control server on real sockets (127.0.0.1, port 0): protocol round trip, fan-out of
operator commands, the auth matrix, hostile input, floods, caps, slow readers, shutdown.

Real clock with ``trio.fail_after`` bounds; the rate limiter's timing rule is tested on
``MockClock``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto.events import TextMessage

import rakka_trio as rk
from rakka_trio import BreakerState as S
from rakka_trio._control._connection import _Connection, _Counters, _TokenBucket
from rakka_trio._control._feed import Feed
from rakka_trio._control._guards import LogLimiter

from .control_helpers import (
    TOKEN,
    Peer,
    RawPeer,
    client_frame,
    control_server,
    operator,
    peer,
    supervisor_config,
    wait_for,
)

pytestmark = pytest.mark.trio


# --- the protocol round trip ----------------------------------------------------------------


async def test_full_round_trip() -> None:
    with trio.fail_after(10):
        async with control_server("a", "b", stats_interval=0.05) as (sup, srv), peer(srv.url) as p:
            assert srv.host == "127.0.0.1" and srv.port > 0
            assert srv.url == f"ws://127.0.0.1:{srv.port}"

            welcome = await p.hello(TOKEN, client="round-trip")
            assert welcome["type"] == "welcome"
            assert welcome["protocol"] == 1 and welcome["role"] == "operator"
            assert [e["name"] for e in welcome["snapshot"]["endpoints"]] == ["a", "b"]
            assert {e["state"] for e in welcome["snapshot"]["endpoints"]} == {"closed"}

            await p.send(
                {
                    "type": "force_open",
                    "id": "cmd-1",
                    "endpoint": "a",
                    "duration": 300,
                    "reason": "incident-42",
                }
            )
            # The audit record, the transition, then the ack: an ack never overtakes the
            # events its own command caused.
            relevant = [await p.recv_until(lambda f: f["type"] != "stats") for _ in range(3)]
            command, transition, ack = relevant
            actor = command["actor"]
            assert actor.startswith("round-trip@127.0.0.1:")
            assert command == {
                "type": "command",
                "wall": command["wall"],
                "endpoint": "a",
                "command": "force_open",
                "actor": actor,
                "reason": "incident-42",
                "duration": 300.0,
            }
            assert transition["type"] == "transition"
            assert (transition["from"], transition["to"]) == ("closed", "forced_open")
            assert transition["cause"] == "forced" and transition["actor"] == actor
            assert transition["reason"] == "incident-42"
            assert transition["open_until_in"] == 300.0
            assert transition["until_reset"] is False
            assert transition["open_until_wall"] == pytest.approx(
                transition["wall"] + 300, abs=0.01
            )
            assert ack == {
                "type": "ack",
                "id": "cmd-1",
                "command": "force_open",
                "endpoint": "a",
                "state": "forced_open",
                "snapshot": None,
            }
            assert sup.breaker("a").state is S.FORCED_OPEN
            assert sup.breaker("b").state is S.CLOSED

            await p.send({"type": "get_state", "id": 2})
            state = await p.recv_type("ack")
            assert state["id"] == 2
            a = state["snapshot"]["endpoints"][0]
            assert a["state"] == "forced_open" and a["forced_reason"] == "incident-42"
            assert a["forced_by"] == actor
            assert 299 < a["open_until_in"] <= 300

            stats = await p.recv_type("stats")
            assert {e["name"]: e["state"] for e in stats["endpoints"]} == {
                "a": "forced_open",
                "b": "closed",
            }

            await p.send({"type": "disable", "id": 3, "endpoint": "b", "reason": "flaky probe"})
            disabled = await p.recv_until(lambda f: f["type"] == "transition")
            assert (disabled["endpoint"], disabled["to"]) == ("b", "disabled")
            assert disabled["until_reset"] is True and disabled["open_until_in"] is None
            assert (await p.recv_type("ack"))["state"] == "disabled"

            await p.send({"type": "reset", "id": 4, "endpoint": "a"})
            reset = await p.recv_until(lambda f: f["type"] == "transition")
            assert (reset["from"], reset["to"], reset["cause"]) == (
                "forced_open",
                "closed",
                "reset",
            )
            assert (await p.recv_type("ack")) == {
                "type": "ack",
                "id": 4,
                "command": "reset",
                "endpoint": "a",
                "state": "closed",
                "snapshot": None,
            }
            assert sup.breaker("a").state is S.CLOSED
            assert srv.statistics().commands == 3


async def test_timed_force_open_expiry_reaches_clients_when_it_happens() -> None:
    with trio.fail_after(10):
        async with control_server() as (sup, srv), operator(srv.url) as p:
            await p.send({"type": "force_open", "id": 1, "endpoint": "a", "duration": 0.2})
            await p.recv_type("ack")
            start = trio.current_time()
            expiry = await p.recv_until(
                lambda f: f["type"] == "transition" and f["cause"] == "timer"
            )
            assert (expiry["from"], expiry["to"]) == ("forced_open", "half_open")
            assert trio.current_time() - start < 2.0
            assert sup.breaker("a").state is S.HALF_OPEN


async def test_force_open_reaches_every_subscriber() -> None:
    with trio.fail_after(10):
        async with (
            control_server(allow_viewers=True) as (sup, srv),
            operator(srv.url, client="alice") as op,
            peer(srv.url) as viewer,
        ):
            assert (await viewer.hello(token=None))["role"] == "viewer"
            async with sup.open_subscription(stats=False) as local:
                await op.send(
                    {
                        "type": "force_open",
                        "id": 1,
                        "endpoint": "b",
                        "duration": 60,
                        "reason": "provider incident",
                    }
                )
                seen = [await client.recv_type("transition") for client in (op, viewer)]
                for transition in seen:
                    assert (transition["endpoint"], transition["to"]) == ("b", "forced_open")
                    assert transition["actor"].startswith("alice@127.0.0.1:")
                # In-process subscribers get the audit event with who and why.
                audit = await local.receive()
                assert isinstance(audit, rk.Command)
                assert audit.command == "force_open" and audit.endpoint == "b"
                assert audit.actor == seen[0]["actor"]
                assert audit.reason == "provider incident" and audit.duration == 60.0
                assert sup.breaker("b").state is S.FORCED_OPEN


async def test_reasons_are_redacted_before_anyone_sees_them() -> None:
    leaked = "sk-proj-abcdefghijklmnop1234"
    with trio.fail_after(10):
        async with control_server() as (sup, srv), operator(srv.url) as p:
            await p.send(
                {"type": "force_open", "id": 1, "endpoint": "a", "reason": f"key {leaked} leaked"}
            )
            transition = await p.recv_type("transition")
            assert transition["reason"] == "key *** leaked"
            assert leaked not in json.dumps(p.received)
            assert sup.breaker("a").statistics().forced_reason == "key *** leaked"


async def test_supervisor_shutdown_closes_clients_with_going_away() -> None:
    supervisor_scope = trio.CancelScope()

    async def run_supervisor(task_status: trio.TaskStatus[rk.Supervisor]) -> None:
        with supervisor_scope:
            await rk.run_supervisor(supervisor_config(), task_status=task_status)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            sup = await nursery.start(run_supervisor)
            srv = await nursery.start(functools.partial(rk.serve_control, sup, token=TOKEN))
            async with operator(srv.url) as p:
                supervisor_scope.cancel()
                # The supervisor is gone: the connected client is told and disconnected.
                error = await p.recv_type("error")
                assert error["code"] == "shutting_down"
                assert (await p.closed()).code == 1001
            nursery.cancel_scope.cancel()


async def test_close_stops_the_server() -> None:
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor_config()) as sup:
            async with trio.open_nursery() as nursery:
                srv = await nursery.start(functools.partial(rk.serve_control, sup, token=TOKEN))
                async with operator(srv.url):
                    pass
                srv.close()
            # serve_control returned (the nursery finished) and the port is closed.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", srv.port)


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow_viewers", "token", "expected"),
    [
        (False, None, None),
        (False, "not-the-token", None),
        (False, "", None),
        (False, TOKEN, "operator"),
        (True, None, "viewer"),
        (True, "not-the-token", "viewer"),
        (True, TOKEN, "operator"),
    ],
)
async def test_auth_matrix(allow_viewers: bool, token: str | None, expected: str | None) -> None:
    with trio.fail_after(10):
        async with control_server(allow_viewers=allow_viewers) as (sup, srv), peer(srv.url) as p:
            answer = await p.hello(token=token)
            if expected is None:
                assert answer["type"] == "error" and answer["code"] == "unauthorized"
                assert (await p.closed()).code == 1008
                assert srv.statistics().refused_auth == 1
                return
            assert answer["type"] == "welcome" and answer["role"] == expected
            commands: list[dict[str, Any]] = [
                {"type": "force_open", "endpoint": "a", "duration": 10},
                {"type": "disable", "endpoint": "a"},
                {"type": "reset", "endpoint": "a"},
            ]
            for i, command in enumerate(commands):
                await p.send({**command, "id": f"c{i}"})
                reply = await p.recv_until(lambda f: f["type"] in ("ack", "error"))
                assert reply["id"] == f"c{i}"
                if expected == "viewer":
                    assert reply["type"] == "error" and reply["code"] == "forbidden"
                    assert sup.breaker("a").state is S.CLOSED
                else:
                    assert reply["type"] == "ack"
            # Both roles may read the state.
            await p.send({"type": "get_state", "id": "s"})
            assert (await p.recv_type("ack"))["snapshot"]["endpoints"][0]["name"] == "a"
            stats = srv.statistics()
            assert (stats.operators, stats.viewers) == (
                (1, 0) if expected == "operator" else (0, 1)
            )


async def test_token_may_be_a_secret() -> None:
    with trio.fail_after(10):
        async with control_server(token=rk.Secret(TOKEN)) as (_, srv), peer(srv.url) as p:
            assert (await p.hello(TOKEN))["role"] == "operator"


async def test_without_a_token_everyone_is_a_viewer() -> None:
    with trio.fail_after(10):
        async with control_server(token=None, allow_viewers=True) as (sup, srv), peer(srv.url) as p:
            assert (await p.hello(TOKEN))["role"] == "viewer"
            await p.send({"type": "force_open", "id": 1, "endpoint": "a"})
            assert (await p.recv_type("error"))["code"] == "forbidden"
            assert sup.breaker("a").state is S.CLOSED


async def test_bad_server_arguments_are_refused() -> None:
    async with rk.open_supervisor(supervisor_config()) as sup:
        with pytest.raises(ValueError, match="allow_viewers"):
            await rk.serve_control(sup, token=None)
        with pytest.raises(ValueError, match="empty"):
            await rk.serve_control(sup, token="")
        with pytest.raises(ValueError, match="max_connections"):
            await rk.serve_control(sup, token=TOKEN, max_connections=0)
        with pytest.raises(ValueError, match="command_rate"):
            await rk.serve_control(sup, token=TOKEN, command_rate=math.nan)


async def test_tokens_never_reach_logs_or_frames(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-5d1e7b0c9a"
    with trio.fail_after(10):
        async with control_server(allow_viewers=True) as (_, srv):
            async with operator(srv.url) as op:
                await op.send({"type": "force_open", "id": 1, "endpoint": "a"})
                await op.recv_type("ack")
            async with peer(srv.url) as viewer:
                await viewer.hello(token=wrong)
                await viewer.send({"type": "reset", "id": 1, "endpoint": "a"})
                await viewer.recv_type("error")
                # A token put in the wrong field is not echoed either.
                await viewer.send({"type": "get_state", "id": 2, "token": wrong})
                invalid = await viewer.recv_type("error")
                assert invalid["code"] == "invalid" and "token" in invalid["message"]
            async with peer(srv.url) as typo:
                await typo.send({"type": "hello", "token": 123456789, "client": wrong})
                bad = await typo.recv_type("error")
                assert bad["code"] == "invalid"
            frames = json.dumps(op.received + viewer.received + typo.received)
    for secret in (TOKEN, wrong, "123456789"):
        assert secret not in caplog.text
        assert secret not in frames
    assert "connected as operator" in caplog.text  # the log is not just empty


# --- the handshake --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "code", "close"),
    [
        ({"type": "get_state", "id": 9}, "hello_required", 1002),
        ({"type": "hello", "client": 42}, "invalid", 1002),
        ({"type": "hello", "token": TOKEN, "protocol": 2}, "unsupported_protocol", 1002),
        ("not json at all", "bad_json", 1002),
        (b"\x00binary hello", "binary_frame", 1002),
    ],
)
async def test_a_bad_first_frame_is_explained_then_closed(
    first: dict[str, Any] | str | bytes, code: str, close: int
) -> None:
    with trio.fail_after(10):
        async with control_server() as (_, srv), peer(srv.url) as p:
            await p.send(first)
            error = await p.recv()
            assert error["type"] == "error" and error["code"] == code
            if isinstance(first, dict) and "id" in first:
                assert error["id"] == first["id"]
            assert (await p.closed()).code == close


async def test_hello_must_come_in_time() -> None:
    with trio.fail_after(10):
        async with control_server(hello_timeout=0.2) as (_, srv), peer(srv.url) as p:
            error = await p.recv()
            assert error["code"] == "hello_timeout"
            assert (await p.closed()).code == 1008


# --- hostile input while a well-behaved client keeps working --------------------------------

LIMIT = 2048

HOSTILE: list[tuple[str, dict[str, Any] | str | bytes, str, int | None]] = [
    ("malformed json", '{"type": "force_open", "id": 7,', "bad_json", None),
    ("array", "[1, 2, 3]", "not_object", None),
    ("bare string", '"force_open"', "not_object", None),
    ("null", "null", "not_object", None),
    ("unknown type", {"type": "launch", "id": 7}, "unknown_type", 7),
    ("missing type", {"id": 7, "endpoint": "a"}, "unknown_type", 7),
    ("type not a string", {"type": ["force_open"], "id": 7}, "unknown_type", 7),
    (
        "wrong field types",
        {"type": "force_open", "id": 7, "endpoint": ["a"], "duration": "300"},
        "invalid",
        7,
    ),
    (
        "bool as number",
        {"type": "force_open", "id": 7, "endpoint": "a", "duration": True},
        "invalid",
        7,
    ),
    ("unknown field", {"type": "reset", "id": 7, "endpoint": "a", "sudo": True}, "invalid", 7),
    ("missing field", {"type": "reset", "id": 7}, "invalid", 7),
    ("bad id", {"type": "reset", "id": {"x": 1}, "endpoint": "a"}, "invalid", None),
    (
        "negative duration",
        {"type": "force_open", "id": 7, "endpoint": "a", "duration": -1},
        "invalid",
        7,
    ),
    ("huge duration", '{"type":"force_open","id":7,"endpoint":"a","duration":1e999}', "invalid", 7),
    ("NaN", '{"type":"force_open","id":7,"endpoint":"a","duration":NaN}', "bad_json", None),
    ("duplicate keys", '{"type":"get_state","type":"force_open","id":7}', "bad_json", None),
    ("deep nesting", "[" * 1020 + "]" * 1020, "bad_json", None),
    (
        "terminal escape",
        {"type": "reset", "id": 7, "endpoint": "a", "reason": "\x1b[2J"},
        "invalid",
        7,
    ),
    (
        "unknown endpoint",
        {"type": "force_open", "id": 7, "endpoint": "nope"},
        "unknown_endpoint",
        7,
    ),
    ("binary frame", b"\x00\x01\x02", "binary_frame", None),
    ("oversize frame", "x" * (LIMIT + 1), "too_large", None),
    ("second hello", {"type": "hello", "token": TOKEN}, "unexpected", None),
    ("server frame", {"type": "ack", "id": 7, "command": "reset"}, "unknown_type", 7),
]


@pytest.mark.parametrize(
    ("frame", "code", "echoed"),
    [pytest.param(frame, code, echoed, id=name) for name, frame, code, echoed in HOSTILE],
)
async def test_hostile_frame_gets_an_error_and_nobody_else_notices(
    frame: dict[str, Any] | str | bytes, code: str, echoed: int | None
) -> None:
    with trio.fail_after(10):
        async with (
            control_server(max_message_size=LIMIT) as (sup, srv),
            operator(srv.url, "good") as good,
            operator(srv.url, "evil") as evil,
        ):
            await evil.send(frame)
            error = await evil.recv()
            assert error["type"] == "error" and error["code"] == code, error
            assert error["id"] == echoed
            assert isinstance(error["message"], str) and error["message"]
            assert sup.breaker("a").state is S.CLOSED  # nothing was carried out

            # The offender's connection still works ...
            await evil.send({"type": "get_state", "id": "after"})
            assert (await evil.recv_type("ack"))["id"] == "after"
            # ... and the well-behaved client still gets commands through and events.
            await good.send({"type": "force_open", "id": 1, "endpoint": "a"})
            assert (await good.recv_type("transition"))["to"] == "forced_open"
            assert (await good.recv_type("ack"))["id"] == 1
            assert srv.statistics().active_connections == 2


async def test_a_frame_far_over_the_limit_closes_the_connection() -> None:
    with trio.fail_after(10):
        async with (
            control_server(max_message_size=LIMIT) as (sup, srv),
            operator(srv.url, "good") as good,
            operator(srv.url, "evil") as evil,
        ):
            await evil.send("x" * (4 * LIMIT + 1))
            assert (await evil.closed()).code == 1009
            sup.force_open("a", reason="still serving")
            assert (await good.recv_type("transition"))["reason"] == "still serving"


async def test_command_flood_is_rate_limited_then_disconnected() -> None:
    with trio.fail_after(10):
        async with (
            control_server(command_rate=5, command_burst=5) as (_, srv),
            operator(srv.url, "good") as good,
            operator(srv.url, "flood") as flood,
        ):
            try:
                for i in range(200):
                    await flood.send({"type": "reset", "id": i, "endpoint": "a"})
            except trio_websocket.ConnectionClosed:
                pass  # the server hung up mid-flood, as it should
            close = await flood.closed()
            assert close.code == 1008 and "flood" in (close.reason or "")
            answers = [f for f in flood.received if f["type"] in ("ack", "error")]
            acks = [f for f in answers if f["type"] == "ack"]
            limited = [f for f in answers if f["type"] == "error"]
            # About one burst was carried out, the rest refused with their ids echoed.
            assert 5 <= len(acks) <= 7
            assert limited and all(f["code"] == "rate_limited" for f in limited)
            assert [f["id"] for f in answers] == list(range(len(answers)))
            assert len(answers) < 20
            assert srv.statistics().closed_for_abuse == 1

            await good.send({"type": "force_open", "id": "g", "endpoint": "b"})
            assert (await good.recv_type("ack"))["state"] == "forced_open"


async def test_token_bucket_refills_continuously(mock_clock: trio.testing.MockClock) -> None:
    bucket = _TokenBucket(rate=2.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    await trio.sleep(0.25)  # half a token: still nothing
    assert not bucket.take()
    await trio.sleep(0.25)
    assert bucket.take() and not bucket.take()
    await trio.sleep(100)  # refills, but never beyond the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


async def test_connection_cap_refuses_viewers_but_never_the_operator() -> None:
    with trio.fail_after(10):
        async with (
            control_server(max_connections=2, allow_viewers=True) as (_, srv),
            peer(srv.url) as first,
        ):
            assert (await first.hello(token=None))["role"] == "viewer"
            async with peer(srv.url) as second, peer(srv.url) as third:
                assert (await second.hello(token=None))["role"] == "viewer"
                refused = await third.hello(token=None)
                assert refused["code"] == "too_many_connections"
                assert (await third.closed()).code == 1013
                assert srv.statistics().refused_capacity == 1
                # The operator token gets in past the cap.
                async with operator(srv.url) as op:
                    await op.send({"type": "get_state", "id": 1})
                    assert (await op.recv_type("ack"))["id"] == 1
                    assert srv.statistics().active_connections == 3
            await wait_for(lambda: srv.statistics().active_connections == 1)
            async with peer(srv.url) as again:
                assert (await again.hello(token=None))["role"] == "viewer"
            await first.send({"type": "get_state", "id": 2})
            assert (await first.recv_type("ack"))["id"] == 2
            assert srv.statistics().refused_capacity == 1


async def test_abrupt_disconnects_do_not_disturb_the_server() -> None:
    with trio.fail_after(10):
        async with control_server() as (sup, srv), operator(srv.url, "good") as good:
            # Garbage instead of an HTTP upgrade.
            junk = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await junk.send_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
            await junk.aclose()
            # Hello, then the TCP connection vanishes without a close frame.
            gone = await RawPeer.connect(srv.port, rcvbuf=None)
            await gone.send({"type": "hello", "token": TOKEN})
            await gone.aclose()
            # Half a frame, then gone.
            half = await RawPeer.connect(srv.port, rcvbuf=None)
            await half.send({"type": "hello", "token": TOKEN})
            frame = half.conn.send(TextMessage(data=json.dumps({"type": "get_state", "id": 1})))
            await half.stream.send_all(frame[: len(frame) // 2])
            await half.aclose()

            await wait_for(lambda: srv.statistics().active_connections == 1)
            sup.force_open("a", reason="after the chaos")
            assert (await good.recv_type("transition"))["reason"] == "after the chaos"


async def test_a_client_that_never_reads_gets_lagged_and_slows_nobody() -> None:
    endpoints = [f"ep{i:03d}" for i in range(100)]
    with trio.fail_after(30):
        async with (
            control_server(*endpoints, stats_interval=0.005, event_buffer=4) as (sup, srv),
            operator(srv.url, "good") as good,
        ):
            slow = await RawPeer.connect(srv.port)  # 4 KiB receive buffer, and never reads
            await slow.send({"type": "hello", "token": TOKEN, "client": "slow"})
            # ~55 KB stats frames at 200 Hz; 300 of them are several times what the slow
            # client's socket buffers can hold, so its writer is stuck in a send. (Stats are a
            # newest-only slot, never queued: only events can lag.)
            for _ in range(300):
                await good.recv_type("stats")
            for i in range(1, 21):  # 40 events (commands, transitions) for a queue of 4
                sup.force_open(f"ep{i:03d}", reason="flood")  # synchronous: returns at once
            sup.force_open("ep000", reason="during the stall")
            with trio.fail_after(2):
                transition = await good.recv_until(
                    lambda f: f["type"] == "transition" and f["reason"] == "during the stall"
                )
            assert transition["endpoint"] == "ep000"

            # The stalled client finally reads: it lost events and was told so.
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["type"] != "lagged":
                frame = await slow.recv()
                assert frame is not None, "the slow client was disconnected"
                frames.append(frame)
            assert frames[0]["type"] == "welcome"
            assert frames[-1]["dropped"] > 0
            assert srv.statistics().events_dropped > 0
            assert srv.statistics().closed_for_abuse == 0  # lagging is not abuse
            await slow.aclose()


async def test_a_client_stuck_for_longer_than_send_timeout_is_disconnected() -> None:
    endpoints = [f"ep{i:03d}" for i in range(100)]
    received = 0

    async def keep_reading(good: Peer) -> None:
        nonlocal received
        while True:
            await good.recv_type("stats")
            received += 1

    with trio.fail_after(30):
        async with (
            control_server(*endpoints, stats_interval=0.005, event_buffer=4, send_timeout=0.5) as (
                _,
                srv,
            ),
            operator(srv.url, "good") as good,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(keep_reading, good)
            stuck = await RawPeer.connect(srv.port)
            await stuck.send({"type": "hello", "token": TOKEN, "client": "stuck"})
            await wait_for(lambda: srv.statistics().closed_for_abuse == 1)
            before = received
            await wait_for(lambda: received >= before + 3)  # the other client is unaffected
            # The stuck client's socket ends once it drains what was already sent.
            while await stuck.recv() is not None:
                pass
            await stuck.aclose()
            await wait_for(lambda: srv.statistics().active_connections == 1)
            assert srv.statistics().closed_for_abuse == 1
            nursery.cancel_scope.cancel()


# --- nothing a connection does leaves it ----------------------------------------------------


async def test_binary_then_oversize_frame_before_hello_cannot_take_the_app_down() -> None:
    # The binary frame is refused and the server starts closing; the 4 MiB frame then made
    # trio-websocket try to send a second close (1009) in the closing state, and wsproto's
    # error escaped serve_control into the application's nursery.
    with trio.fail_after(20):
        async with control_server("a") as (sup, srv):
            for _ in range(3):
                raw = await RawPeer.connect(srv.port, rcvbuf=None)
                with contextlib.suppress(trio.BrokenResourceError):
                    await raw.send_raw(client_frame(2, b"\x00binary"))
                    await raw.send_raw(client_frame(1, b"x" * (4 * 2**20)))
                await raw.until_closed()
                await raw.aclose()
            await wait_for(lambda: srv.statistics().unauthenticated == 0)
            async with operator(srv.url) as op:
                await op.send({"type": "force_open", "id": 1, "endpoint": "a"})
                assert (await op.recv_type("ack"))["state"] == "forced_open"
            assert sup.breaker("a").state is S.FORCED_OPEN


@pytest.mark.parametrize("after_hello", [False, True])
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(after_hello: bool) -> None:
    with trio.fail_after(10):
        async with control_server() as (_, srv), operator(srv.url, "good") as good:
            raw = await RawPeer.connect(srv.port, rcvbuf=None)
            if after_hello:
                await raw.send({"type": "hello", "token": TOKEN})
                assert (await raw.recv() or {}).get("type") == "welcome"
            await raw.send_raw(client_frame(1, b'{"type":"get_state","id":"\xff\xfe"}'))
            assert await raw.until_closed() == 1007
            await raw.aclose()
            await good.send({"type": "get_state", "id": 1})
            assert (await good.recv_type("ack"))["id"] == 1


# --- the stats broadcast --------------------------------------------------------------------


class _RecordingConnection(_Connection):
    def __init__(self, conn_id: int, offers: list[tuple[float, int, str]]) -> None:
        super().__init__(conn_id, None, f"127.0.0.1:{conn_id}")  # type: ignore[arg-type]
        self._offers = offers

    def offer_stats(self, at: float, text: str) -> None:
        self._offers.append((trio.current_time(), self.id, text))


def _feed(sup: rk.Supervisor) -> Feed:
    return Feed(
        sup,
        counters=_Counters(),
        log_limiter=LogLimiter(30.0),
        max_message_size=65536,
        command_rate=10.0,
        command_burst=20,
        event_buffer=16,
        send_timeout=1.0,
    )


async def test_each_stats_tick_is_encoded_once_and_spread(
    mock_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with rk.open_supervisor(supervisor_config(stats_interval=1.0)) as sup:
            feed = _feed(sup)
            offers: list[tuple[float, int, str]] = []
            feed.connections.update(_RecordingConnection(i, offers) for i in range(40))
            start = trio.current_time()
            await feed._spread_stats(rk.Stats(at=start, statistics=sup.statistics()))
    assert sorted(conn_id for _, conn_id, _ in offers) == list(range(40))  # everyone, once
    assert len({id(text) for _, _, text in offers}) == 1  # one encoded text, shared
    assert json.loads(offers[0][2])["type"] == "stats"
    instants: dict[float, int] = {}
    for at, _, _ in offers:
        instants[at] = instants.get(at, 0) + 1
    # Batches of at most 8, the first at once, all within a quarter of a second.
    assert max(instants.values()) <= 8 and len(instants) == 5
    assert min(instants) == start and max(instants) - start <= 0.25


async def test_answers_keep_their_order_and_flow_under_a_fast_stats_stream() -> None:
    endpoints = [f"ep{i:03d}" for i in range(100)]  # ~55 KB stats frames
    with trio.fail_after(30):
        async with (
            control_server(*endpoints, stats_interval=0.002) as (_, srv),
            operator(srv.url) as op,
        ):
            for i in range(30):
                kind = "force_open" if i % 2 == 0 else "reset"
                await op.send({"type": kind, "id": i, "endpoint": "ep007"})
                # The transition first, then the ack, however many stats go in between.
                transition = await op.recv_until(lambda f: f["type"] in ("transition", "ack"))
                assert transition["type"] == "transition"
                ack = await op.recv_until(lambda f: f["type"] in ("transition", "ack"))
                assert (ack["type"], ack["id"]) == ("ack", i)
            assert srv.statistics().stats_broadcasts > 0


class _SentLog:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_message(self, text: str) -> None:
        self.sent.append(text)


async def test_a_stats_snapshot_older_than_a_sent_transition_is_skipped() -> None:
    async with rk.open_supervisor(supervisor_config()) as sup:
        feed = _feed(sup)
        ws = _SentLog()
        conn = _Connection(1, ws, "127.0.0.1:1")  # type: ignore[arg-type]
        conn.state_at = 5.0  # a transition at t=5 went out
        conn.stats = (4.0, "older")
        await feed._send_stats(conn)
        conn.stats = (5.0, "same instant")
        await feed._send_stats(conn)
        assert ws.sent == ["same instant"] and conn.stats is None


async def test_many_viewers_each_get_every_stats_tick() -> None:
    with trio.fail_after(20):
        async with control_server("a", stats_interval=0.1, allow_viewers=True) as (_, srv):
            async with contextlib.AsyncExitStack() as stack:
                viewers = []
                for _ in range(40):
                    viewers.append(await stack.enter_async_context(peer(srv.url)))
                    assert (await viewers[-1].hello(token=None))["role"] == "viewer"
                ticks = [[(await v.recv_type("stats"))["wall"] for _ in range(3)] for v in viewers]
            # Newest-only slots may skip a tick for a slow reader, but never reorder them.
            assert all(t == sorted(t) and len(set(t)) == 3 for t in ticks)
            assert srv.statistics().stats_broadcasts >= 3


# --- TLS ------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(10):
        async with control_server(ssl_context=server_ctx) as (sup, srv):
            assert srv.url.startswith("wss://127.0.0.1:")
            async with rk.open_control_client(srv.url, token=TOKEN, ssl_context=client_ctx) as c:
                ack = await c.force_open("a", 30, "over tls")
                assert ack.state == "forced_open"
            assert sup.breaker("a").state is S.FORCED_OPEN
            # Without trusting the certificate the client refuses to talk.
            with pytest.raises(rk.ControlConnectionError, match="TLS"):
                async with rk.open_control_client(srv.url, token=TOKEN):
                    pass
            # Plain ws:// against a TLS port does not get anywhere either.
            with pytest.raises(rk.ControlConnectionError):
                async with rk.open_control_client(
                    srv.url.replace("wss://", "ws://"), token=TOKEN, connect_timeout=0.5
                ):
                    pass
