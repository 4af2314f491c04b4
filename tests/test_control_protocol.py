"""Protocol v1 messages and conversions, without sockets: strict decoding of client frames,
JSON-safe frames built from supervisor events and statistics."""

from __future__ import annotations

import json
import math
import sys
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rakka_trio as rk
from rakka_trio._control import _protocol as proto
from rakka_trio._control._protocol import ErrorCode, ProtocolError

SECRETISH = "hunter2-operator-token"

# --- client messages ------------------------------------------------------------------------

VALID_CLIENT = [
    proto.Hello(token="t", client="tui"),
    proto.Hello(),
    proto.ForceOpen(id=1, endpoint="a", duration=300.0, reason="incident-42"),
    proto.ForceOpen(id="x", endpoint="a"),
    proto.Reset(id="r-1", endpoint="a", reason="recovered"),
    proto.Disable(id=3, endpoint="b", duration=0.5),
    proto.GetState(id=4),
]


@pytest.mark.parametrize("message", VALID_CLIENT, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(message: proto.ClientMessage) -> None:
    text = proto.encode(message)
    data = json.loads(text)
    assert next(iter(data)) == "type"  # the tag leads, which makes logs readable
    assert data["type"] == type(message).TYPE
    assert proto.decode_client_message(text) == message


def test_force_open_as_a_client_writes_it() -> None:
    msg = proto.decode_client_message(
        '{"type":"force_open","id":"c1","endpoint":"openai-primary","duration":300,'
        '"reason":"incident-42"}'
    )
    assert msg == proto.ForceOpen(
        id="c1", endpoint="openai-primary", duration=300.0, reason="incident-42"
    )
    assert isinstance(msg.duration, float)


def decode_error(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        proto.decode_client_message(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "code", "echoed_id"),
    [
        ("{", ErrorCode.BAD_JSON, None),
        ("", ErrorCode.BAD_JSON, None),
        ('{"type":"get_state","id":1} trailing', ErrorCode.BAD_JSON, None),
        ('{"type":"force_open","id":1,"endpoint":"a","duration":NaN}', ErrorCode.BAD_JSON, None),
        (
            '{"type":"force_open","id":1,"endpoint":"a","duration":-Infinity}',
            ErrorCode.BAD_JSON,
            None,
        ),
        ('{"type":"get_state","id":1,"id":2}', ErrorCode.BAD_JSON, None),
        ('{"type":"get_state","id":' + "9" * 5000 + "}", ErrorCode.BAD_JSON, None),
        ("[" * 100_000, ErrorCode.BAD_JSON, None),
        ("[]", ErrorCode.NOT_OBJECT, None),
        ("42", ErrorCode.NOT_OBJECT, None),
        ('"hello"', ErrorCode.NOT_OBJECT, None),
        ('{"id":5}', ErrorCode.UNKNOWN_TYPE, 5),
        ('{"type":null,"id":5}', ErrorCode.UNKNOWN_TYPE, 5),
        ('{"type":7,"id":5}', ErrorCode.UNKNOWN_TYPE, 5),
        ('{"type":"welcome","id":"w"}', ErrorCode.UNKNOWN_TYPE, "w"),
        ('{"type":"reset","id":5}', ErrorCode.INVALID, 5),
        ('{"type":"reset","id":5,"endpoint":"a","extra":1}', ErrorCode.INVALID, 5),
        ('{"type":"reset","id":true,"endpoint":"a"}', ErrorCode.INVALID, None),
        ('{"type":"reset","id":1.5,"endpoint":"a"}', ErrorCode.INVALID, None),
        ('{"type":"reset","id":"","endpoint":"a"}', ErrorCode.INVALID, None),
        ('{"type":"reset","id":' + str(2**60) + ',"endpoint":"a"}', ErrorCode.INVALID, None),
        ('{"type":"force_open","id":5,"endpoint":"a","duration":"300"}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":"a","duration":false}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":"a","duration":0}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":"a","duration":1e999}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":"a","duration":1e12}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":""}', ErrorCode.INVALID, 5),
        ('{"type":"force_open","id":5,"endpoint":"a\\nb"}', ErrorCode.INVALID, 5),
        ('{"type":"reset","id":5,"endpoint":"a","reason":"\\u001b[31mred"}', ErrorCode.INVALID, 5),
        ('{"type":"reset","id":5,"endpoint":"a","reason":"\\u202egnp.exe"}', ErrorCode.INVALID, 5),
        ('{"type":"reset","id":5,"endpoint":"a","reason":"\\ud800"}', ErrorCode.INVALID, 5),
        (
            '{"type":"reset","id":5,"endpoint":"a","reason":"' + "r" * 1001 + '"}',
            ErrorCode.INVALID,
            5,
        ),
        ('{"type":"hello","client":""}', ErrorCode.INVALID, None),
        ('{"type":"hello","protocol":"1"}', ErrorCode.INVALID, None),
    ],
)
def test_bad_frames_are_refused_with_a_code(
    text: str, code: str, echoed_id: proto.MessageId | None
) -> None:
    error = decode_error(text)
    assert error.code == code
    assert error.id == echoed_id
    assert error.message


def test_field_errors_name_every_field_and_expected_type() -> None:
    error = decode_error(
        '{"type":"force_open","id":1,"endpoint":["a"],"duration":"soon","sudo":1,"x":2}'
    )
    assert error.code == ErrorCode.INVALID
    assert "endpoint: expected a string, got array" in error.message
    assert "duration: expected a number, got string" in error.message
    assert "unknown fields 'sudo', 'x'" in error.message


def test_errors_never_quote_the_values_they_refuse() -> None:
    # A token pasted into the wrong field (or of the wrong type) must not be echoed back.
    for text in (
        json.dumps({"type": "get_state", "id": 1, "token": SECRETISH}),
        json.dumps({"type": "hello", "token": [SECRETISH]}),
        json.dumps({"type": "hello", "client": {"k": SECRETISH}}),
        json.dumps({"type": "force_open", "id": 1, "endpoint": "a", "duration": SECRETISH}),
        json.dumps({"type": SECRETISH}),
        json.dumps({"type": "reset", "id": 1, "endpoint": "a\n" + SECRETISH}),
        '{"type":"hello","token":"' + SECRETISH + '",',
    ):
        error = decode_error(text)
        assert SECRETISH not in error.message, error.message
        assert SECRETISH not in str(error)


def test_hello_repr_hides_the_token() -> None:
    assert SECRETISH not in repr(proto.Hello(token=SECRETISH, client="x"))


def test_peek_id() -> None:
    assert proto.peek_id('{"type":"x","id":"abc"}') == "abc"
    assert proto.peek_id('{"id":7}') == 7
    assert proto.peek_id('{"id":true}') is None
    assert proto.peek_id("[1]") is None
    assert proto.peek_id("garbage") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_decodes_or_fails_with_a_protocol_error(text: str) -> None:
    try:
        proto.decode_client_message(text)
    except ProtocolError as exc:
        assert exc.code in vars(ErrorCode).values()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(proto.CLIENT_TYPES)),
    st.dictionaries(
        st.sampled_from(["id", "endpoint", "duration", "reason", "token", "client", "protocol"])
        | st.text(max_size=8),
        json_values,
        max_size=6,
    ),
)
def test_any_json_object_decodes_to_a_valid_message_or_fails_cleanly(
    kind: str, fields: dict[str, Any]
) -> None:
    # The drawn fields may include a "type" of their own: the sampled kind wins.
    text = json.dumps({**fields, "type": kind})
    try:
        msg = proto.decode_client_message(text)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID, ErrorCode.BAD_JSON)
        return
    # Whatever was accepted is well-formed and survives a round trip.
    assert kind == type(msg).TYPE
    assert proto.decode_client_message(proto.encode(msg)) == msg


# --- server frames --------------------------------------------------------------------------


def endpoint_state(**overrides: Any) -> proto.EndpointState:
    values: dict[str, Any] = dict(
        name="a",
        provider="openai",
        base_url="https://api.openai.com/v1",
        state="closed",
        consecutive_failures=0,
        failures=0,
        successes=0,
        rejected=0,
        trips=0,
        failure_rate=None,
        calls_in_window=0,
        failures_in_window=0,
        open_for=None,
        open_until_in=None,
        open_until_wall=None,
        until_reset=False,
        forced_reason=None,
        forced_by=None,
        probes_in_flight=0,
    )
    values.update(overrides)
    return proto.EndpointState(**values)


SERVER_FRAMES: list[proto.ServerFrame] = [
    proto.WelcomeFrame(
        protocol=1,
        role="operator",
        server="rakka-trio/0.1.0",
        stats_interval=1.0,
        snapshot=proto.Snapshot(node_id="n", wall=1.0, endpoints=[endpoint_state()]),
    ),
    proto.TransitionFrame(
        wall=1.5,
        endpoint="a",
        from_state="closed",
        to_state="open",
        cause="failure_threshold",
        consecutive_failures=5,
        failure_rate=0.5,
        calls_in_window=10,
        trips=1,
        open_until_in=30.0,
        open_until_wall=31.5,
        until_reset=False,
        actor=None,
        reason=None,
    ),
    proto.CommandFrame(
        wall=2.0, endpoint="a", command="force_open", actor="me@h:1", reason="r", duration=None
    ),
    proto.StatsFrame(node_id="n", wall=3.0, endpoints=[endpoint_state(state="open")]),
    proto.AckFrame(id="x", command="reset", endpoint="a", state="closed"),
    proto.AckFrame(
        id=9, command="get_state", snapshot=proto.Snapshot(node_id="n", wall=1.0, endpoints=[])
    ),
    proto.ErrorFrame(id=None, code="bad_json", message="invalid JSON"),
    proto.LaggedFrame(wall=4.0, dropped=12),
    proto.EndpointAddedFrame(wall=5.0, endpoint="c"),
    proto.EndpointRemovedFrame(wall=6.0, endpoint="c"),
    proto.TaskRestartedFrame(wall=7.0, task="stats", error="boom", crashes=1, backoff=0.1),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frames_round_trip(frame: proto.ServerFrame) -> None:
    text = proto.encode(frame)
    assert json.loads(text)["type"] == type(frame).TYPE
    assert proto.decode_server_frame(text) == frame


def test_transition_uses_from_and_to_on_the_wire() -> None:
    data = json.loads(proto.encode(SERVER_FRAMES[1]))
    assert (data["from"], data["to"]) == ("closed", "open")
    assert "from_state" not in data and "to_state" not in data


def test_the_client_tolerates_what_a_newer_server_may_add() -> None:
    lagged = proto.decode_server_frame('{"type":"lagged","wall":1,"dropped":3,"new_field":true}')
    assert lagged == proto.LaggedFrame(wall=1.0, dropped=3)
    unknown = proto.decode_server_frame('{"type":"limiter","tokens":5}')
    assert unknown == proto.UnknownFrame(type="limiter", data={"type": "limiter", "tokens": 5})
    for bad in ('{"type":"lagged","wall":1}', b"\x00", "[]", "{}"):
        with pytest.raises(ProtocolError):
            proto.decode_server_frame(bad)


# --- events and statistics -> frames --------------------------------------------------------


def transition(**overrides: Any) -> rk.Transition:
    values: dict[str, Any] = dict(
        at=100.0,
        wall=1_700_000_000.0,
        endpoint="a",
        from_state=rk.BreakerState.CLOSED,
        to_state=rk.BreakerState.FORCED_OPEN,
        cause="forced",
        consecutive_failures=0,
        failure_rate=None,
        calls_in_window=0,
        trips=0,
        open_until=130.0,
        actor="alice@127.0.0.1:5",
        reason="incident",
    )
    values.update(overrides)
    return rk.Transition(**values)


def test_transition_frame_gives_relative_and_wall_clock_times() -> None:
    frame = proto.frame_from_event(transition())
    assert isinstance(frame, proto.TransitionFrame)
    assert frame.from_state == "closed" and frame.to_state == "forced_open"  # enum values
    assert frame.open_until_in == 30.0
    assert frame.open_until_wall == 1_700_000_030.0
    assert frame.until_reset is False


def test_forced_until_reset_is_null_not_infinity() -> None:
    frame = proto.frame_from_event(transition(open_until=math.inf))
    assert isinstance(frame, proto.TransitionFrame)
    assert (frame.open_until_in, frame.open_until_wall, frame.until_reset) == (None, None, True)
    text = proto.encode(frame)  # strict JSON: no Infinity
    assert "Infinity" not in text and json.loads(text)["until_reset"] is True


def test_transition_without_timer_and_nan_rate() -> None:
    frame = proto.frame_from_event(
        transition(to_state=rk.BreakerState.CLOSED, open_until=None, failure_rate=math.nan)
    )
    assert isinstance(frame, proto.TransitionFrame)
    assert (frame.open_until_in, frame.until_reset, frame.failure_rate) == (None, False, None)
    json.loads(proto.encode(frame))


def test_other_events_become_frames_and_secrets_are_scrubbed() -> None:
    key = "sk-ant-abcdefghijklmnopqrstuvwx"
    frames = [
        proto.frame_from_event(e)
        for e in (
            rk.Command(
                at=1.0, wall=2.0, endpoint="a", command="reset", actor="op", reason=f"key {key}"
            ),
            rk.Lagged(at=1.0, wall=2.0, dropped=7),
            rk.EndpointAdded(at=1.0, wall=2.0, endpoint="z"),
            rk.EndpointRemoved(at=1.0, wall=2.0, endpoint="z"),
            rk.TaskRestarted(
                at=1.0, wall=2.0, task="t", error=f"401 for {key}", crashes=2, backoff=math.inf
            ),
        )
    ]
    assert [type(f).__name__ for f in frames] == [
        "CommandFrame",
        "LaggedFrame",
        "EndpointAddedFrame",
        "EndpointRemovedFrame",
        "TaskRestartedFrame",
    ]
    text = json.dumps([proto.to_dict(f) for f in frames if f is not None], allow_nan=False)
    assert key not in text and "***" in text
    assert proto.frame_from_event(rk.Event(at=1.0)) is None  # plain events are not forwarded


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def statistics(
    breaker: rk.BreakerStatistics, at: float, base_url: str = "http://127.0.0.1:1"
) -> rk.SupervisorStatistics:
    ep = rk.EndpointStatistics(name="a", provider="openai", base_url=base_url, breaker=breaker)
    return rk.SupervisorStatistics(
        node_id="host:1",
        at=at,
        endpoints=MappingProxyType({"a": ep}),
        subscribers=0,
        events_published=0,
        task_restarts=0,
    )


def test_snapshot_of_a_forced_breaker() -> None:
    clock = _Clock()
    handle = rk.BreakerHandle("a", clock=clock)
    handle.force_open(30.0, reason="incident", actor="alice")
    clock.now = 104.0
    snap = proto.snapshot_from_statistics(statistics(handle.statistics(), at=104.0), wall=5000.0)
    (a,) = snap.endpoints
    assert (a.state, a.forced_reason, a.forced_by) == ("forced_open", "incident", "alice")
    assert a.open_for == 4.0
    assert a.open_until_in == 26.0 and a.open_until_wall == 5026.0
    assert a.until_reset is False
    assert snap.node_id == "host:1" and snap.wall == 5000.0


def test_snapshot_of_a_breaker_forced_until_reset_is_strict_json() -> None:
    clock = _Clock()
    handle = rk.BreakerHandle("a", clock=clock)
    handle.force_open(None)
    snap = proto.snapshot_from_statistics(statistics(handle.statistics(), at=100.0))
    (a,) = snap.endpoints
    assert (a.open_until_in, a.open_until_wall, a.until_reset) == (None, None, True)
    ack = proto.AckFrame(id=1, command="get_state", snapshot=snap)
    json.loads(proto.encode(ack))


def test_snapshot_of_a_closed_breaker_has_no_timers() -> None:
    handle = rk.BreakerHandle("a", clock=_Clock())
    (a,) = proto.snapshot_from_statistics(statistics(handle.statistics(), at=100.0)).endpoints
    assert (a.state, a.open_for, a.open_until_in, a.until_reset) == ("closed", None, None, False)
    # Subsystems that do not report yet are null, not zero.
    assert (a.in_flight, a.queue_depth, a.limiter_utilization, a.latency_p95) == (
        None,
        None,
        None,
        None,
    )


def test_base_url_loses_credentials_and_query() -> None:
    handle = rk.BreakerHandle("a", clock=_Clock())
    url = "https://user:pa55word@generativelanguage.googleapis.com:443/v1beta?key=AIzaSyA1234567890abcdefghijk"
    (a,) = proto.snapshot_from_statistics(statistics(handle.statistics(), 100.0, url)).endpoints
    assert a.base_url == "https://generativelanguage.googleapis.com:443/v1beta"


@attrs.frozen
class _ReportingStatistics:
    """An endpoint's statistics once the engine reports in-flight, queue and latency."""

    name: str
    provider: str
    base_url: str
    breaker: rk.BreakerStatistics
    in_flight: int
    queue_depth: int
    limiter_utilization: float
    latency_p50: float
    latency_p95: float
    latency_p99: float


def test_subsystem_figures_appear_when_reported_and_stay_json_safe() -> None:
    handle = rk.BreakerHandle("a", clock=_Clock())
    ep = _ReportingStatistics(
        name="a",
        provider="openai",
        base_url="http://x",
        breaker=handle.statistics(),
        in_flight=3,
        queue_depth=7,
        limiter_utilization=0.42,
        latency_p50=0.1,
        latency_p95=math.nan,
        latency_p99=math.inf,
    )
    state = proto.endpoint_state(ep, now=100.0, wall=1.0)
    assert (state.in_flight, state.queue_depth, state.limiter_utilization) == (3, 7, 0.42)
    assert (state.latency_p50, state.latency_p95, state.latency_p99) == (0.1, None, None)


def test_nesting_depth_is_limited_whatever_the_recursion_limit() -> None:
    # The answer must not depend on sys.getrecursionlimit(), which other code may raise.
    from rakka_trio._control._codec import MAX_JSON_DEPTH

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20_000))
    try:
        for depth in (MAX_JSON_DEPTH + 1, 1020, 5000):
            with pytest.raises(ProtocolError, match="nested too deeply") as caught:
                proto.decode_client_message("[" * depth + "]" * depth)
            assert caught.value.code == ErrorCode.BAD_JSON
    finally:
        sys.setrecursionlimit(old_limit)
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    with pytest.raises(ProtocolError) as caught:
        proto.decode_client_message(at_limit)
    assert caught.value.code == ErrorCode.NOT_OBJECT  # valid JSON, just not an object
    # Brackets inside strings are text, not nesting.
    reason = "[" * 500 + "{" * 300
    msg = proto.decode_client_message(
        json.dumps({"type": "reset", "id": 1, "endpoint": "a", "reason": reason})
    )
    assert isinstance(msg, proto.Reset) and msg.reason == reason
