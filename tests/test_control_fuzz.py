"""Fuzzing the control server on real sockets: random bytes, random text and hostile JSON
thrown at it (before and after hello, as a viewer and as an operator, and below the
websocket layer) while a well-behaved client keeps working.

The last test runs 40 hostile clients at once while the application serves traffic.

Properties: the server never crashes and keeps serving others; every frame on an open
connection gets exactly one answer, all of them well-formed; a viewer never changes a breaker;
a hello only makes an operator with the right token. Each example is bounded by
``trio.fail_after``; example counts keep the whole file to a few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
from collections import Counter
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rakka_trio as rk
from rakka_trio import BreakerState as S
from rakka_trio._control import _protocol as proto
from rakka_trio.testing import MockProvider, serve_mock_provider

from .control_helpers import (
    TOKEN,
    Peer,
    RawPeer,
    client_frame,
    control_server,
    operator,
    peer,
    wait_for,
)

pytestmark = pytest.mark.trio

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KEY = "sk-mock-control-fuzz-5e2b7d"
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])

ERROR_CODES = {v for k, v in vars(proto.ErrorCode).items() if not k.startswith("_")}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["a", "b", "nope", "", TOKEN, "\x1b[2J", "\u202e", "a" * 300])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(
    ["type", "id", "endpoint", "duration", "reason", "token", "client", "protocol"]
) | st.text(max_size=10)
message_types = st.sampled_from([*proto.CLIENT_TYPES, *proto.SERVER_TYPES, "", "FORCE_OPEN"])


@st.composite
def hostile_objects(draw: st.DrawFn) -> str:
    """JSON objects that look like commands, with wrong, missing or extra fields."""
    obj: dict[str, Any] = {"type": draw(message_types)}
    if draw(st.booleans()):
        obj["id"] = draw(st.integers(min_value=-5, max_value=10**6) | st.text(max_size=12))
    if draw(st.booleans()):
        obj["endpoint"] = draw(st.sampled_from(["a", "b", "nope"]) | json_values)
    obj.update(draw(st.dictionaries(field_names, json_values, max_size=4)))
    return json.dumps(obj)


raw_json_texts = st.sampled_from(
    [
        '{"type":"force_open","id":1,"endpoint":"a","duration":NaN}',
        '{"type":"force_open","id":1,"endpoint":"a","duration":Infinity}',
        '{"type":"reset","type":"force_open","id":1,"endpoint":"a"}',
        '{"type":"force_open","id":1,"endpoint":"a","duration":1e400}',
        "[" * 1500 + "]" * 1500,
        '{"a":' * 1200 + "1" + "}" * 1200,
        '{"type":"get_state","id":' + "9" * 5000 + "}",
        "\ufeff{}",
        '{"type":"reset","id":"\\ud800","endpoint":"a"}',
    ]
)

frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    json_values.map(json.dumps),
    hostile_objects(),
    raw_json_texts,
)


async def answers(p: Peer, expected: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``expected`` acks/errors (other frames are events); whether the server closed."""
    got: list[dict[str, Any]] = []
    while len(got) < expected:
        try:
            frame = await p.recv()
        except trio_websocket.ConnectionClosed:
            return got, True
        if frame["type"] in ("ack", "error"):
            got.append(frame)
    return got, False


async def still_serving(good: Peer, srv_url: str, endpoint: str = "b") -> None:
    """The well-behaved client gets a command through and sees its transition, and the
    server accepts a new connection."""
    await good.send(
        {"type": "force_open", "id": "probe", "endpoint": endpoint, "reason": "health probe"}
    )
    # The hostile client may have caused transitions too: wait for ours.
    transition = await good.recv_until(
        lambda f: f["type"] == "transition" and f["reason"] == "health probe"
    )
    assert (transition["endpoint"], transition["to"]) == (endpoint, "forced_open")
    ack = await good.recv_type("ack")
    assert ack["id"] == "probe"
    async with operator(srv_url, "newcomer") as newcomer:
        await newcomer.send({"type": "get_state", "id": 1})
        assert (await newcomer.recv_type("ack"))["id"] == 1


def check_answer(frame: dict[str, Any]) -> None:
    if frame["type"] == "error":
        assert frame["code"] in ERROR_CODES
        assert isinstance(frame["message"], str) and frame["message"]
        assert TOKEN not in frame["message"]


@FUZZ
@given(st.lists(frames, min_size=1, max_size=12))
async def test_a_viewer_throwing_anything_never_acts_and_never_breaks_the_server(
    batch: list[str | bytes],
) -> None:
    with trio.fail_after(15):
        async with (
            control_server("a", "b", allow_viewers=True, max_message_size=4096) as (sup, srv),
            operator(srv.url, "good") as good,
            peer(srv.url) as hostile,
        ):
            assert (await hostile.hello(token=None))["role"] == "viewer"
            sent = 0
            for frame in batch:
                try:
                    await hostile.send(frame)
                except trio_websocket.ConnectionClosed:
                    break
                sent += 1
            replies, closed = await answers(hostile, sent)
            if not closed:
                assert len(replies) == sent  # exactly one answer per frame
            for reply in replies:
                check_answer(reply)
                if reply["type"] == "ack":
                    assert reply["command"] == "get_state"  # the only thing a viewer may do
            # A viewer can never change a breaker, whatever it sends.
            assert sup.breaker("a").state is S.CLOSED
            assert sup.breaker("b").state is S.CLOSED
            assert srv.statistics().commands == 0
            await still_serving(good, srv.url)


@FUZZ
@given(st.lists(frames, min_size=1, max_size=12))
async def test_an_operator_throwing_anything_gets_one_answer_per_frame(
    batch: list[str | bytes],
) -> None:
    with trio.fail_after(15):
        async with (
            control_server("a", "b", max_message_size=4096) as (_, srv),
            operator(srv.url, "good") as good,
            operator(srv.url, "hostile") as hostile,
        ):
            sent = 0
            for frame in batch:
                try:
                    await hostile.send(frame)
                except trio_websocket.ConnectionClosed:
                    break
                sent += 1
            replies, closed = await answers(hostile, sent)
            if not closed:
                assert len(replies) == sent
            for reply in replies:
                check_answer(reply)
            # Commands that were acknowledged are exactly the ones carried out.
            acked = [r for r in replies if r["type"] == "ack" and r["command"] != "get_state"]
            assert srv.statistics().commands == len(acked)
            await still_serving(good, srv.url, endpoint="b")


@FUZZ
@given(frames)
async def test_any_first_frame_is_a_hello_or_refused(first: str | bytes) -> None:
    with trio.fail_after(15):
        async with (
            control_server("a", allow_viewers=False) as (sup, srv),
            operator(srv.url, "good") as good,
            peer(srv.url) as stranger,
        ):
            await stranger.send(first)
            answer = await stranger.recv()
            if answer["type"] == "welcome":
                # Only a well-formed hello carrying the operator token gets in (viewers are
                # not allowed here).
                assert isinstance(first, str)
                hello = proto.decode_client_message(first)
                assert isinstance(hello, proto.Hello) and hello.token == TOKEN
                assert answer["role"] == "operator"
            else:
                assert answer["type"] == "error"
                check_answer(answer)
                assert (await stranger.closed()).code in (1002, 1008, 1009)
            assert sup.breaker("a").state is S.CLOSED
            await still_serving(good, srv.url, endpoint="a")


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=512), st.booleans())
async def test_garbage_below_the_websocket_layer(noise: bytes, after_hello: bool) -> None:
    with trio.fail_after(15):
        async with control_server("a", "b") as (_, srv), operator(srv.url, "good") as good:
            raw = await RawPeer.connect(srv.port, rcvbuf=None)
            if after_hello:
                await raw.send({"type": "hello", "token": TOKEN})
            with contextlib.suppress(trio.BrokenResourceError):  # the server may hang up
                await raw.stream.send_all(noise)  # not websocket framing at all
            await raw.aclose()
            await still_serving(good, srv.url)


# --- many hostile clients at once, while the application serves traffic ---------------------

HOSTILE_CLIENTS = 40
SEED = 1307
MAX_MESSAGE = 4096  # frames over 4x this close the connection (1009)


async def _hostile_action(raw: RawPeer, rng: random.Random) -> None:
    """One random thing a hostile client does on an open websocket (raw frames, so nothing
    on our side refuses to send what the server must survive)."""
    choice = rng.randrange(14)
    if choice == 0:  # a hello: no token (a viewer), a wrong one, or malformed
        token = rng.choice([None, None, "wrong-token-8c1d", 12345])
        await raw.send_raw(client_frame(1, json.dumps({"type": "hello", "token": token}).encode()))
    elif choice == 1:  # a command (only ever refused: nobody here holds the token)
        command = {
            "type": rng.choice(["force_open", "reset", "get_state"]),
            "id": 1,
            "endpoint": "a",
        }
        await raw.send_raw(client_frame(1, json.dumps(command).encode()))
    elif choice == 2:
        await raw.send_raw(client_frame(2, rng.randbytes(rng.randrange(1, 64))))  # binary
    elif choice == 3:  # far over the limit: the connection is closed with 1009
        await raw.send_raw(client_frame(1, b"x" * rng.randrange(5 * MAX_MESSAGE, 1 << 18)))
    elif choice == 4:  # over the limit but under the hard one: an error
        await raw.send_raw(client_frame(1, b"y" * rng.randrange(MAX_MESSAGE + 1, 2 * MAX_MESSAGE)))
    elif choice == 5:
        await raw.send_raw(client_frame(1, b'{"type":"get_state","id":"\xff\xfe"}'))  # bad UTF-8
    elif choice == 6:
        await raw.send_raw(client_frame(9, rng.randbytes(rng.randrange(0, 125))))  # ping
    elif choice == 7:
        await raw.send_raw(client_frame(10, b"unsolicited pong"))
    elif choice == 8:  # a close frame (and whatever follows it)
        await raw.send_raw(client_frame(8, (1000 + rng.randrange(20)).to_bytes(2, "big")))
    elif choice == 9:  # a fragment that is never finished, or a continuation of nothing
        await raw.send_raw(client_frame(rng.choice([1, 0]), b'{"type":', fin=False))
    elif choice == 10:
        await raw.send_raw(rng.randbytes(rng.randrange(1, 200)))  # not websocket framing
    elif choice == 11:  # a flood of small frames
        frame = client_frame(1, b'{"type":"get_state","id":7}')
        await raw.send_raw(frame * rng.randrange(5, 60))
    elif choice == 12:  # read a little of what came back
        with trio.move_on_after(0.05):
            await raw.recv()
    else:
        await trio.sleep(rng.random() * 0.02)


async def _hostile_client(port: int, rng: random.Random, tally: Counter[str]) -> None:
    for _ in range(rng.randrange(2, 5)):
        source = f"127.0.0.{rng.randrange(2, 10)}"
        try:
            if rng.random() < 0.1:  # below the websocket layer altogether
                raw = await RawPeer.open_tcp(port, rcvbuf=None, source=source)
                await raw.send_raw(rng.randbytes(rng.randrange(1, 300)))
            else:
                origin = "https://evil.example" if rng.random() < 0.1 else None
                raw = await RawPeer.connect(port, rcvbuf=None, source=source, origin=origin)
                if raw.rejected is not None:
                    tally["origin refused"] += 1
                for _ in range(rng.randrange(0, 12)):
                    await _hostile_action(raw, rng)
            ending = rng.randrange(3)
            if ending == 0:
                await raw.reset()  # abrupt TCP reset
            elif ending == 1:
                await raw.aclose()
            else:
                with trio.move_on_after(0.2):
                    await raw.until_closed()
                await raw.aclose()
            tally["finished"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            tally["cut off"] += 1  # the server hung up on us mid-way: fine


async def test_many_hostile_clients_while_traffic_flows() -> None:
    """Random frame sequences from 40 clients at once (text, binary, oversize, bad UTF-8,
    pings, close frames at odd moments, broken fragments, floods, TCP resets), while the
    application streams requests through the loopback mock provider and an operator keeps
    forcing a breaker open and resetting it. The application and the operator's connection
    must both come through, and every hostile socket must be gone afterwards."""
    mock = MockProvider(api_key=KEY, chunks=4)
    tally: Counter[str] = Counter()
    traffic: Counter[str] = Counter()
    acks: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as app:
            await app.start(serve_mock_provider, mock)
            endpoints = [
                rk.EndpointConfig(
                    name=name,
                    provider="openai",
                    base_url=mock.base_url_for("openai"),
                    model="fuzz",
                    credential=rk.StaticCredential(KEY),
                )
                for name in ("a", "b")
            ]
            cfg = rk.SupervisorConfig(endpoints=endpoints, stats_interval=0.05)
            async with rk.open_supervisor(cfg) as sup:
                srv = await app.start(
                    functools.partial(
                        rk.serve_control,
                        sup,
                        token=TOKEN,
                        allow_viewers=True,
                        max_message_size=MAX_MESSAGE,
                        hello_timeout=2.0,
                    )
                )
                async with operator(srv.url, "good") as good:
                    hostile_done = trio.Event()

                    async def requests(name: str) -> None:
                        while not hostile_done.is_set():
                            try:
                                async with sup.endpoint(name).stream(REQUEST) as chunks:
                                    async for _ in chunks:
                                        pass
                                traffic["ok"] += 1
                            except rk.RakkaError as exc:
                                traffic[type(exc).__name__] += 1
                                await trio.sleep(0.01)

                    async def operate() -> None:
                        i = 0
                        while not hostile_done.is_set():
                            i += 1
                            for kind in ("force_open", "reset"):
                                await good.send(
                                    {"type": kind, "id": f"{kind}-{i}", "endpoint": "b"}
                                )
                                ack = await good.recv_until(lambda f: f["type"] in ("ack", "error"))
                                assert ack["type"] == "ack", ack
                                acks.append(ack["id"])
                            await trio.sleep(0.1)

                    async def hostiles() -> None:
                        async with trio.open_nursery() as crowd:
                            for i in range(HOSTILE_CLIENTS):
                                rng = random.Random(f"{SEED}-{i}")
                                crowd.start_soon(_hostile_client, srv.port, rng, tally)
                        hostile_done.set()

                    async with trio.open_nursery() as work:
                        work.start_soon(hostiles)
                        work.start_soon(operate)
                        for name in ("a", "a", "b"):
                            work.start_soon(requests, name)

                    # Every hostile socket is gone; the operator is still connected and served.
                    await wait_for(
                        lambda: (
                            srv.statistics().unauthenticated == 0
                            and srv.statistics().active_connections == 1
                        )
                    )
                    await good.send({"type": "get_state", "id": "last"})
                    assert (await good.recv_type("ack"))["id"] == "last"
                    stats = srv.statistics()
            app.cancel_scope.cancel()
    assert sum(tally.values()) >= 2 * HOSTILE_CLIENTS
    assert traffic["ok"] > 20
    assert set(traffic) <= {"ok", "CircuitOpen"}  # only the operator's own force-opens refused
    assert len(acks) >= 2 and stats.commands == len(acks)  # no hostile client ever acted
    assert stats.operators == 1
