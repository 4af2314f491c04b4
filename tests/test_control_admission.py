"""Admission to the control server under attack, on real sockets: sockets that never say
hello cannot lock the operator out, token guessing is throttled and logged sparingly, and
browser origins are refused unless allowed. The limits' arithmetic is tested on
``MockClock``; source addresses other than 127.0.0.1 come from the loopback /8.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

import rakka_trio as rk
from rakka_trio import BreakerState as S
from rakka_trio._control._guards import (
    HelloThrottle,
    LogLimiter,
    WaitingRoom,
    normalize_origins,
    peer_key,
    refused_origin,
)

from .control_helpers import (
    TOKEN,
    RawPeer,
    control_server,
    operator,
    peer,
    supervisor_config,
    wait_for,
)

pytestmark = pytest.mark.trio


async def raw_hello(raw: RawPeer, token: str | None = TOKEN) -> dict[str, Any]:
    await raw.send({"type": "hello", "token": token, "client": "raw"})
    frame = await raw.recv()
    assert frame is not None, "the server hung up instead of answering the hello"
    return frame


# --- sockets that never say hello -----------------------------------------------------------


async def squat(srv: rk.ControlServer, source: str, *, upgrade: bool = True) -> RawPeer:
    """A socket from ``source`` that never says hello, once the server has registered it (so
    the waiting room's age order is the order of these calls)."""
    waiting = srv.statistics().unauthenticated
    if upgrade:
        raw = await RawPeer.connect(srv.port, rcvbuf=None, source=source)
    else:
        raw = await RawPeer.open_tcp(srv.port, rcvbuf=None, source=source)
    await wait_for(lambda: srv.statistics().unauthenticated > waiting)
    return raw


async def test_squatting_sockets_never_lock_out_the_operator() -> None:
    with trio.fail_after(30):
        # 64 connections, 8 waiting per peer; squatters must not time out while we set up.
        async with control_server("a", hello_timeout=120) as (sup, srv):
            squatters: list[RawPeer] = []
            for i in range(64):
                # 8 addresses x 8 sockets: every per-peer limit and the total are full. Half
                # finish the websocket upgrade, half never even send the HTTP request.
                squatters.append(await squat(srv, f"127.0.0.{2 + i % 8}", upgrade=i % 2 == 1))
            assert srv.statistics().unauthenticated == 64

            async with operator(srv.url) as op:  # from 127.0.0.1, within hello_timeout
                await op.send({"type": "force_open", "id": 1, "endpoint": "a"})
                assert (await op.recv_type("ack"))["state"] == "forced_open"
            assert sup.breaker("a").state is S.FORCED_OPEN
            stats = srv.statistics()
            # The operator's socket closed the oldest waiting one to get in; the rest wait.
            assert stats.evicted_unauthenticated == 1
            assert stats.unauthenticated == 63
            assert stats.refused_handshakes == 1
            assert await squatters[0].until_closed() is None  # no upgrade: just hung up
            for squatter in squatters:
                await squatter.aclose()


async def test_waiting_sockets_are_limited_per_peer_oldest_first() -> None:
    with trio.fail_after(20):
        async with control_server("a", max_unauthenticated_per_ip=3, hello_timeout=120) as (_, srv):
            mine = [await squat(srv, "127.0.0.5") for _ in range(3)]
            other = await squat(srv, "127.0.0.6")

            # A fourth socket from the same peer closes that peer's oldest, nobody else's.
            mine.append(await RawPeer.connect(srv.port, rcvbuf=None, source="127.0.0.5"))
            assert await mine[0].until_closed() == 1013
            assert srv.statistics().evicted_unauthenticated == 1
            assert srv.statistics().unauthenticated == 4

            # An operator sharing that address still gets in (the next oldest makes room).
            op = await RawPeer.connect(srv.port, rcvbuf=None, source="127.0.0.5")
            welcome = await raw_hello(op)
            assert welcome["type"] == "welcome" and welcome["role"] == "operator"
            assert await mine[1].until_closed() == 1013
            # The other peer's socket was never touched and can still say hello.
            assert (await raw_hello(other))["role"] == "operator"
            stats = srv.statistics()
            assert (stats.evicted_unauthenticated, stats.refused_handshakes) == (2, 2)
            assert (stats.unauthenticated, stats.operators) == (2, 2)
            for raw in (*mine, other, op):
                await raw.aclose()


async def test_a_socket_that_never_upgrades_is_closed_after_hello_timeout() -> None:
    with trio.fail_after(10):
        async with control_server(hello_timeout=0.3) as (_, srv):
            silent = await RawPeer.open_tcp(srv.port, rcvbuf=None)
            assert await silent.until_closed() is None
            stats = srv.statistics()
            assert (stats.hello_timeouts, stats.refused_handshakes, stats.unauthenticated) == (
                1,
                1,
                0,
            )


async def test_a_broken_upgrade_is_closed_at_once_not_after_hello_timeout() -> None:
    with trio.fail_after(5):  # hello_timeout is 10 s
        async with control_server() as (_, srv):
            junk = await RawPeer.open_tcp(srv.port, rcvbuf=None)
            await junk.send_raw(b"GET / HTTP/1.1\r\nthis is not a header line\r\n\r\n")
            assert await junk.until_closed() is None
            await wait_for(lambda: srv.statistics().unauthenticated == 0)
            stats = srv.statistics()
            assert (stats.refused_handshakes, stats.hello_timeouts) == (1, 0)


async def test_waiting_room_evicts_the_oldest_of_the_peer_then_overall() -> None:
    room = WaitingRoom(limit=4, per_peer=2)
    a1, a2 = room.enter("a", math.inf), room.enter("a", math.inf)
    b1 = room.enter("b", math.inf)
    a3 = room.enter("a", math.inf)  # per-peer limit: a1 goes
    assert a1.evicted and a1.scope.cancel_called
    assert not (a2.evicted or b1.evicted or a3.evicted)
    c1 = room.enter("c", math.inf)
    assert len(room) == 4
    c2 = room.enter("c", math.inf)  # total limit: the oldest overall (a2) goes
    assert a2.evicted and not (b1.evicted or a3.evicted or c1.evicted or c2.evicted)
    room.leave(b1)
    room.leave(b1)  # idempotent
    room.leave(a2)  # already evicted: nothing happens
    assert (len(room), room.evicted) == (3, 2)


async def test_peer_key_groups_ipv6_by_64() -> None:
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9")
    assert peer_key("2001:db8:1:2::1") != peer_key("2001:db8:1:3::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("unknown") == "unknown"


# --- token guessing -------------------------------------------------------------------------


async def test_wrong_tokens_are_throttled_per_peer_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rakka_trio.control")
    with trio.fail_after(30):
        async with control_server("a") as (_, srv):
            for i in range(6):
                async with peer(srv.url) as guesser:
                    answer = await guesser.hello(token=f"guess-{i}-0123456789")
                    assert answer["code"] == "unauthorized"
            stats = srv.statistics()
            assert (stats.failed_hellos, stats.refused_auth) == (6, 6)
            # The last guesses waited 0.4 and 0.8 s: far longer than a reconnect takes.
            assert stats.throttled_hellos >= 2
            before = stats.throttled_hellos
            # The operator on the same address waits out the current delay (1.6 s), then
            # gets in: the throttle slows guessing, it does not lock anyone out.
            async with operator(srv.url):
                pass
            assert srv.statistics().throttled_hellos == before + 1
    refusals = [r for r in caplog.records if "no valid token" in r.getMessage()]
    assert len(refusals) == 1  # one line per peer per 30 s, not one per guess
    assert refusals[0].levelno == logging.WARNING
    assert "guess-" not in caplog.text


async def test_a_viewer_hello_with_a_wrong_token_counts_as_a_guess() -> None:
    with trio.fail_after(10):
        async with control_server("a", allow_viewers=True) as (_, srv):
            async with peer(srv.url) as p:
                assert (await p.hello(token=None))["role"] == "viewer"  # no token: no guess
            async with peer(srv.url) as p:
                assert (await p.hello(token="wrong-token-4e1f9a"))["role"] == "viewer"
            assert srv.statistics().failed_hellos == 1


async def test_hello_throttle_doubles_caps_and_forgets(mock_clock: trio.testing.MockClock) -> None:
    throttle = HelloThrottle(first_delay=0.05, max_delay=2.0, forget_after=60.0)
    assert throttle.ready_at("p") == -math.inf
    delays = [throttle.record_failure("p") for _ in range(8)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert throttle.ready_at("p") == trio.current_time() + 2.0
    assert throttle.ready_at("q") == -math.inf  # per peer
    await trio.sleep(59)
    assert throttle.record_failure("p") == 2.0  # still remembered
    await trio.sleep(60.5)
    assert throttle.ready_at("p") == -math.inf  # a quiet minute: forgotten
    assert throttle.record_failure("p") == 0.05


async def test_hello_throttle_remembers_a_bounded_number_of_peers(
    mock_clock: trio.testing.MockClock,
) -> None:
    throttle = HelloThrottle(max_peers=3)
    for peer_name in "abcd":
        throttle.record_failure(peer_name)
    assert throttle.ready_at("a") == -math.inf  # the oldest was dropped
    assert all(throttle.ready_at(p) > trio.current_time() for p in "bcd")


async def test_log_limiter_holds_back_and_reports(mock_clock: trio.testing.MockClock) -> None:
    limiter = LogLimiter(30.0)
    assert limiter.check("a") == 0
    assert [limiter.check("a") for _ in range(5)] == [None] * 5
    assert limiter.check("b") == 0  # per key
    await trio.sleep(29.9)
    assert limiter.check("a") is None
    await trio.sleep(0.1)
    assert limiter.check("a") == 6  # goes out, saying how many were held back
    assert limiter.check("a") is None


# --- the Origin policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "origin", "admitted"),
    [
        (None, None, True),  # the CLI, scripts, the TUI: no Origin header
        (None, "https://evil.example", False),
        (None, "null", False),  # file:// pages and sandboxed frames
        (None, "http://127.0.0.1:8080", False),  # a page served from this very host
        (["https://ops.example.com"], "https://ops.example.com", True),
        (["https://ops.example.com"], "HTTPS://OPS.EXAMPLE.COM/", True),
        (["https://ops.example.com"], "https://ops.example.com:8443", False),
        (["https://ops.example.com"], "https://evil.example", False),
        (["*"], "https://evil.example", True),
    ],
)
async def test_browser_origins_are_refused_unless_allowed(
    allowed: list[str] | None, origin: str | None, admitted: bool
) -> None:
    with trio.fail_after(10):
        async with control_server("a", allowed_origins=allowed) as (sup, srv):
            raw = await RawPeer.connect(srv.port, rcvbuf=None, origin=origin)
            stats = srv.statistics()
            if admitted:
                assert raw.rejected is None
                assert (await raw_hello(raw))["role"] == "operator"
                assert stats.refused_origin == 0
            else:
                assert raw.rejected == 403
                assert (stats.refused_origin, stats.refused_handshakes) == (1, 1)
                assert sup.breaker("a").state is S.CLOSED
            await raw.aclose()


async def test_refused_origin_checks_every_origin_header() -> None:
    allowed = normalize_origins(["https://ops.example.com"])
    ok = (b"origin", b"https://ops.example.com")
    assert refused_origin([ok], allowed) is None
    assert refused_origin([ok, (b"Origin", b"https://evil.example")], allowed) == (
        "https://evil.example"
    )
    assert refused_origin([(b"host", b"x")], allowed) is None


async def test_bad_admission_arguments_are_refused() -> None:
    async with rk.open_supervisor(supervisor_config()) as sup:
        with pytest.raises(TypeError, match="single string"):
            await rk.serve_control(sup, token=TOKEN, allowed_origins="https://ops.example.com")
        with pytest.raises(ValueError, match="not an origin"):
            await rk.serve_control(sup, token=TOKEN, allowed_origins=["ops.example.com"])
        with pytest.raises(TypeError, match="strings"):
            await rk.serve_control(sup, token=TOKEN, allowed_origins=[b"https://x.example"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="max_unauthenticated_per_ip"):
            await rk.serve_control(sup, token=TOKEN, max_unauthenticated_per_ip=0)
