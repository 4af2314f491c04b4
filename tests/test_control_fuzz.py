"""Fuzzing the control server on real sockets: random bytes, random text and hostile JSON
thrown at it (before and after hello, as a viewer and as an operator, and below the
websocket layer) while a well-behaved client keeps working.

Properties: the server never crashes and keeps serving others; every frame on an open
connection gets exactly one answer, all of them well-formed; a viewer never changes a breaker;
a hello only makes an operator with the right token. Each example is bounded by
``trio.fail_after``; example counts keep the whole file to a few seconds.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rakka_trio import BreakerState as S
from rakka_trio._control import _protocol as proto

from .control_helpers import TOKEN, Peer, RawPeer, control_server, operator, peer

pytestmark = pytest.mark.trio

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

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
