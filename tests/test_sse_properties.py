"""Property tests: SSEDecoder equals a literal reading of the specification, under any chunking.

``reference`` below is a deliberately naive, text-level transcription of the WHATWG "event
stream interpretation" section: decode the whole stream, drop one BOM, split lines with a
regular expression, and run the field rules. It is slow and obviously right; the real decoder
is fast and must agree with it on every stream hypothesis can think of, however the bytes are
cut into reads.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rakka_trio as rk
from rakka_trio import SSEDecoder, SSEEvent

Result = tuple[list[SSEEvent], str, int | None]

_LINE_END = re.compile("\r\n|\r|\n")


def reference(stream: bytes, *, lenient_eof: bool = False) -> Result:
    """The specification, step by step, on the whole stream at once."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    *lines, tail = _LINE_END.split(text)  # the piece after the last line end is incomplete
    if lenient_eof:
        lines += [tail, ""] if tail else [""]
    events: list[SSEEvent] = []
    data, event_type, id_buffer, last_id = "", "", "", ""
    retry: int | None = None
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(SSEEvent(event_type or "message", data, last_id, retry))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id":
            if "\0" not in value:
                id_buffer = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events, last_id, retry


def decode(
    pieces: list[bytes], *, lenient_eof: bool = False, max_event_size: int = 2**20
) -> Result:
    dec = SSEDecoder(max_event_size, lenient_eof=lenient_eof)
    events: list[SSEEvent] = []
    for piece in pieces:
        events += dec.feed(piece)
    events += dec.close()
    return events, dec.last_event_id, dec.retry


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """Cut ``stream`` at ``points`` (taken modulo its length; duplicates give empty reads)."""
    n = len(stream)
    cuts = sorted(p % (n + 1) for p in points)
    edges = [0, *cuts, n]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


# --- a grammar of event streams, biased towards the awkward cases ---------------------------

_text = st.text(
    alphabet=st.one_of(
        st.sampled_from("ab :\t\0\ufeffé日🎉\u2028\x85"),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)
_retry_values = st.one_of(
    st.integers(0, 10**12).map(str),
    st.sampled_from(["", "-1", "1.5", " 7", "7 ", "0x10", "٣", "00042"]),
)
_names = st.sampled_from(["data", "event", "id", "retry", "foo", "Data", "", "data ", "\ufeffdata"])
_separators = st.sampled_from([":", ": ", ":  ", ""])
_raw_bytes = st.sampled_from(
    [b"\xff", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xf0\x9f", b"\x00"]
)


@st.composite
def _field_line(draw: st.DrawFn) -> bytes:
    name = draw(_names)
    value = draw(_retry_values) if name == "retry" else draw(_text)
    line = (name + draw(_separators) + value).encode()
    if draw(st.integers(0, 9)) == 0:  # sprinkle invalid UTF-8 into some lines
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(_raw_bytes) + line[at:]
    return line


_line = st.one_of(
    _field_line(),
    _field_line(),
    st.just(b""),  # blank line: dispatch
    _text.map(lambda t: b":" + t.encode()),  # comment
)
_line_end = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    prefix = draw(
        st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\xef\xbb"])
    )
    body = [draw(_line) + draw(_line_end) for _ in range(draw(st.integers(0, 14)))]
    tail = draw(st.one_of(st.just(b""), _field_line()))  # maybe an unterminated last line
    return prefix + b"".join(body) + tail


# Streams made of the lines real servers send, LF-terminated: they exercise the decoder's fast
# path for "data: ..." events and its hand-over to the general path much more often.
_typical_line = st.sampled_from(
    [
        b'data: {"a": 1}',
        b"data: x",
        b"data:",
        b"",
        b"",
        b"id: 7",
        b"id:",
        b"event: e",
        b"retry: 5",
        b": ping",
        b"data: \xc3\xa9\xe2\x82",
        b"data",
    ]
)


@st.composite
def typical_streams(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_typical_line, max_size=30))
    end = draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    return end.join(lines) + draw(st.sampled_from([b"", end, end + end]))


_splits = st.lists(st.integers(0, 10_000), max_size=12)

_common = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_common
@given(streams(), _splits)
@example(b"data: a\r\n\r\n", [8])
@example(b"\xef\xbb\xbfdata: x\n\n", [1, 2])
@example(b"data: \xf0\x9f\x8e\x89\n\n", [7, 8, 9])
def test_any_split_matches_the_specification(stream: bytes, points: list[int]) -> None:
    expected = reference(stream)
    assert decode([stream]) == expected
    assert decode(cut(stream, points)) == expected


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typical_streams(), _splits)
@example(b"id: 7\ndata: x\n\ndata: y", [])  # an ID set in one read, dispatched in the next
def test_typical_streams_any_split_matches_the_specification(
    stream: bytes, points: list[int]
) -> None:
    expected = reference(stream)
    assert decode([stream]) == expected
    assert decode(cut(stream, points)) == expected
    for at in range(1, len(stream)):  # every single cut: reads end at every possible byte
        assert decode([stream[:at], stream[at:]]) == expected, at
    assert decode(cut(stream, points), lenient_eof=True) == reference(stream, lenient_eof=True)


@_common
@given(streams(), _splits)
def test_lenient_eof_matches_the_specification_with_a_final_blank_line(
    stream: bytes, points: list[int]
) -> None:
    expected = reference(stream, lenient_eof=True)
    assert decode(cut(stream, points), lenient_eof=True) == expected


@_common
@given(streams())
def test_byte_by_byte_equals_whole(stream: bytes) -> None:
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == decode([stream])


@_common
@given(
    st.binary(max_size=200)
    | st.lists(
        st.sampled_from([b"\r", b"\n", b"data", b":", b" ", b"\xef\xbb\xbf", b"x", b"\xe2"])
    ).map(b"".join),
    _splits,
)
def test_arbitrary_bytes_match_the_specification(stream: bytes, points: list[int]) -> None:
    expected = reference(stream)
    assert decode(cut(stream, points)) == expected


@_common
@given(streams(), _splits, st.integers(1, 40))
def test_size_limit_does_not_depend_on_chunking(
    stream: bytes, points: list[int], limit: int
) -> None:
    def outcome(pieces: list[bytes]) -> Result | str:
        try:
            return decode(pieces, max_event_size=limit)
        except rk.EventTooLarge:
            return "too large"

    whole = outcome([stream])
    assert outcome(cut(stream, points)) == whole
    if whole != "too large":  # the limit never changes a result it lets through
        assert whole == reference(stream)


@pytest.mark.parametrize("read", [1, 3, 7, 64, 255, 4096])
def test_long_realistic_stream_in_fixed_reads(read: int) -> None:
    lines = []
    for i in range(300):
        if i % 17 == 0:
            lines.append(b": keep-alive\n\n")
        if i % 29 == 0:
            lines.append(b"event: tick\r\nid: %d\r\ndata: %d\r\n\r\n" % (i, i))
        lines.append(b'data: {"n": %d, "t": "\xc3\xa9\xf0\x9f\x8e\x89"}\n\n' % i)
    stream = b"".join(lines)
    pieces = [stream[i : i + read] for i in range(0, len(stream), read)]
    assert decode(pieces) == reference(stream)
    assert len(decode(pieces)[0]) == 300 + 11
