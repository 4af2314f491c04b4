"""SSEDecoder against the WHATWG HTML "event stream interpretation" rules, one rule at a time.

Each expected result below is read off the specification text
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation),
not produced by the decoder. Every stream is decoded whole, one byte at a time, at every
single split point (for short streams) and at random split points, and all of those must agree.
"""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Iterator

import pytest

import rakka_trio as rk
from rakka_trio import SSEDecoder, SSEEvent

E = SSEEvent


def chunkings(stream: bytes, seed: int = 0) -> Iterator[tuple[str, list[bytes]]]:
    """Ways of cutting ``stream`` into reads: whole, byte by byte, each 2-split, random."""
    yield "whole", [stream]
    yield "bytewise", [stream[i : i + 1] for i in range(len(stream))]
    if len(stream) <= 400:
        for cut in range(1, len(stream)):
            yield f"split@{cut}", [stream[:cut], stream[cut:]]
    if len(stream) < 2:
        return
    rng = random.Random(seed)
    for n in range(25):
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, 1 + n % 7)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        # empty reads are legal and must change nothing
        pieces.insert(rng.randrange(len(pieces) + 1), b"")
        yield f"random{n}", pieces


def run(
    pieces: list[bytes], *, lenient_eof: bool = False
) -> tuple[list[SSEEvent], str, int | None]:
    dec = SSEDecoder(lenient_eof=lenient_eof)
    events: list[SSEEvent] = []
    for piece in pieces:
        events += dec.feed(piece)
    events += dec.close()
    return events, dec.last_event_id, dec.retry


def decode(stream: bytes, *, lenient_eof: bool = False) -> list[SSEEvent]:
    """The events of ``stream``, after checking that every chunking yields exactly them."""
    expected = run([stream], lenient_eof=lenient_eof)
    for name, pieces in chunkings(stream):
        assert run(pieces, lenient_eof=lenient_eof) == expected, name
    return expected[0]


def final_state(stream: bytes) -> tuple[str, int | None]:
    _, last_id, retry = run([stream])
    return last_id, retry


# --- dispatch -------------------------------------------------------------------------------


def test_single_event() -> None:
    assert decode(b"data: hi\n\n") == [E("message", "hi", "", None)]


def test_blank_line_dispatches_each_event() -> None:
    assert decode(b"data: a\n\ndata: b\n\ndata: c\n\n") == [E(data="a"), E(data="b"), E(data="c")]


def test_event_without_final_blank_line_is_discarded_at_eof() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [E(data="a")]
    assert decode(b"data: a\n\ndata: b") == [E(data="a")]
    assert decode(b"data: a\n\nevent: x\ndata: b\nid: 4\n") == [E(data="a")]


def test_lenient_eof_flushes_the_pending_event() -> None:
    assert decode(b"data: a\n\ndata: b\n", lenient_eof=True) == [E(data="a"), E(data="b")]
    # an unterminated last line is interpreted too
    assert decode(b"data: a\n\nevent: x\ndata: b", lenient_eof=True) == [
        E(data="a"),
        E("x", "b"),
    ]
    # nothing pending: nothing extra
    assert decode(b"data: a\n\n", lenient_eof=True) == [E(data="a")]
    assert decode(b"data: a\n\n: comment", lenient_eof=True) == [E(data="a")]


def test_no_event_without_data() -> None:
    # "If the data buffer is an empty string, set the data buffer and the event type buffer
    # to the empty string and return."
    assert decode(b"event: x\n\n") == []
    assert decode(b"id: 1\n\n") == []
    assert decode(b"retry: 10\n\n") == []
    assert decode(b"\n\n\n\n") == []


def test_event_type_is_reset_even_when_nothing_is_dispatched() -> None:
    assert decode(b"event: x\n\ndata: y\n\n") == [E("message", "y")]


def test_empty_data_line_still_dispatches() -> None:
    # "data" appends the value and a LF, so the buffer is "\n" (not empty) and the trailing
    # LF is removed at dispatch.
    assert decode(b"data:\n\n") == [E(data="")]
    assert decode(b"data\n\n") == [E(data="")]


def test_extra_blank_lines_between_events_change_nothing() -> None:
    assert decode(b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n") == [E(data="a"), E(data="b")]


# --- line endings ---------------------------------------------------------------------------


@pytest.mark.parametrize("nl", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(nl: bytes) -> None:
    stream = b"event: e" + nl + b"data: one" + nl + b"data: two" + nl + nl + b"data: 3" + nl + nl
    assert decode(stream) == [E("e", "one\ntwo"), E(data="3")]


def test_mixed_line_endings() -> None:
    assert decode(b"data: a\rdata: b\ndata: c\r\n\rdata: d\r\n\n") == [
        E(data="a\nb\nc"),
        E(data="d"),
    ]


def test_crlf_is_one_line_end_even_split_across_reads() -> None:
    # Split exactly between CR and LF: still one line end, so no blank line in between.
    stream = b"data: a\r\ndata: b\r\n\r\n"
    assert decode(stream) == [E(data="a\nb")]
    events, _, _ = run([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [E(data="a\nb")]


def test_cr_cr_is_two_line_ends() -> None:
    assert decode(b"data: a\r\rdata: b\r\r") == [E(data="a"), E(data="b")]
    events, _, _ = run([b"data: a\r", b"\r", b"data: b\r", b"\r"])
    assert events == [E(data="a"), E(data="b")]


def test_lf_cr_is_two_line_ends() -> None:
    assert decode(b"data: a\n\rdata: b\n\r") == [E(data="a"), E(data="b")]


def test_other_unicode_line_breaks_are_data() -> None:
    # Only CR and LF end lines; NEL, LS, PS, VT and FF are ordinary characters.
    value = "a\u0085b\u2028c\u2029d\x0be\x0cf"
    assert decode(b"data: " + value.encode() + b"\n\n") == [E(data=value)]


# --- fields ---------------------------------------------------------------------------------


def test_comments_are_ignored() -> None:
    assert decode(b": hello\n:\ndata: a\n: between\ndata: b\n\n: trailer\n\n") == [E(data="a\nb")]


def test_comment_only_stream() -> None:
    assert decode(b": keep-alive\n\n: keep-alive\n\n") == []


def test_one_leading_space_is_removed_and_only_one() -> None:
    assert decode(b"data:x\n\n") == [E(data="x")]
    assert decode(b"data: x\n\n") == [E(data="x")]
    assert decode(b"data:  x\n\n") == [E(data=" x")]
    assert decode(b"data:\tx\n\n") == [E(data="\tx")]
    assert decode(b"data: x \n\n") == [E(data="x ")]


def test_only_the_first_colon_separates() -> None:
    assert decode(b"data: a: b:c\n\n") == [E(data="a: b:c")]


def test_field_without_colon_has_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [E(data="\n")]
    assert decode(b"event\ndata: x\n\n") == [E("message", "x")]  # empty type means "message"


def test_field_names_are_case_sensitive_and_exact() -> None:
    assert decode(b"Data: x\nDATA: y\ndata : z\n data: w\n\n") == []
    assert decode(b"Event: x\ndata: y\n\n") == [E(data="y")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: a\nbaz\n\n") == [E(data="a")]


def test_data_lines_join_with_lf() -> None:
    assert decode(b"data: a\ndata: b\ndata\ndata: c\n\n") == [E(data="a\nb\n\nc")]
    assert decode(b"data: a\ndata:\n\n") == [E(data="a\n")]


def test_event_type() -> None:
    assert decode(b"event: add\ndata: 1\n\ndata: 2\n\n") == [E("add", "1"), E("message", "2")]
    assert decode(b"event: a\nevent: b\ndata: 1\n\n") == [E("b", "1")]
    assert decode(b"event:\ndata: 1\n\n") == [E("message", "1")]


def test_id_persists_across_events() -> None:
    assert decode(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n") == [
        E(data="a", id="1"),
        E(data="b", id="1"),
        E(data="c", id="2"),
    ]


def test_empty_id_resets_the_last_event_id() -> None:
    assert decode(b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 3\ndata: c\n\nid:\ndata: d\n\n") == [
        E(data="a", id="1"),
        E(data="b", id=""),
        E(data="c", id="3"),
        E(data="d", id=""),
    ]


def test_id_containing_nul_is_ignored() -> None:
    assert decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        E(data="a", id="1"),
        E(data="b", id="1"),
    ]
    assert final_state(b"id: 1\n\nid: \x00\n\n")[0] == "1"


def test_id_set_after_data_applies_to_that_event() -> None:
    assert decode(b"data: a\nid: 7\n\n") == [E(data="a", id="7")]


def test_last_event_id_updates_on_blank_line_without_data() -> None:
    assert decode(b"id: 5\n\n") == []
    assert final_state(b"id: 5\n\n")[0] == "5"


def test_last_event_id_set_in_one_read_is_dispatched_in_the_next() -> None:
    # Cut after "id: 7\n", the second read dispatches "x" and then ends mid-event: the last
    # event ID must still become "7" at that dispatch.
    assert decode(b"id: 7\ndata: x\n\ndata: y") == [E(data="x", id="7")]
    events, last_id, _ = run([b"id: 7\n", b"data: x\n\ndata: y"])
    assert (events, last_id) == ([E(data="x", id="7")], "7")


def test_last_event_id_is_not_updated_by_an_undispatched_tail() -> None:
    # The ID buffer changed, but the stream ended before a blank line made it the last event ID.
    assert final_state(b"id: 1\n\nid: 2\n")[0] == "1"
    assert final_state(b"id: 1\n\nid: 2\ndata: x")[0] == "1"


def test_retry_only_when_all_ascii_digits() -> None:
    assert decode(b"retry: 1500\ndata: a\n\n") == [E(data="a", retry=1500)]
    for bad in (b"1.5", b"-1", b"+1", b" 1", b"1 ", b"1e3", b"abc", b"", b"\xd9\xa3"):
        assert decode(b"retry: 1500\n\nretry: " + bad + b"\ndata: a\n\n") == [
            E(data="a", retry=1500)
        ], bad
    assert decode(b"retry: 0\ndata: a\n\n") == [E(data="a", retry=0)]
    assert decode(b"retry: 007\ndata: a\n\n") == [E(data="a", retry=7)]


def test_retry_without_value_is_ignored() -> None:
    assert decode(b"retry\ndata: a\n\n") == [E(data="a", retry=None)]


def test_retry_is_in_effect_immediately_and_persists() -> None:
    # The reconnection time is set when the field is processed, not at dispatch.
    assert final_state(b"retry: 10\n") == ("", 10)
    assert decode(b"retry: 10\ndata: a\n\ndata: b\n\nretry: 20\ndata: c\n\n") == [
        E(data="a", retry=10),
        E(data="b", retry=10),
        E(data="c", retry=20),
    ]


def test_huge_retry_does_not_hang_or_crash() -> None:
    assert decode(b"retry: " + b"0" * 10_000 + b"42\ndata: a\n\n") == [E(data="a", retry=42)]
    assert final_state(b"retry: " + b"9" * 20_000 + b"\n")[1] is None


# --- encoding -------------------------------------------------------------------------------


def test_one_leading_bom_is_stripped() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [E(data="a")]


def test_second_bom_is_part_of_the_first_field_name() -> None:
    # After one BOM is dropped the next one makes the line "\ufeffdata: a": an unknown field.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n") == [E(data="b")]


def test_bom_not_at_start_is_data() -> None:
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [E(data="\ufeffa")]


def test_partial_bom_prefix_is_not_stripped() -> None:
    assert decode(b"\xef\xbbdata: a\n\ndata: b\n\n") == [E(data="b")]
    assert decode(b"\xef\xbb\n\ndata: b\n\n") == [E(data="b")]


def test_short_streams_around_the_bom() -> None:
    assert decode(b"") == []
    assert decode(b"\xef\xbb\xbf") == []
    assert decode(b"\xef") == []
    assert decode(b"\xef\xbb\xbf\n\n") == []
    assert decode(b"\xef\xbb\xbfdata", lenient_eof=True) == [E(data="")]
    assert decode(b"\xef\xbb", lenient_eof=True) == []


def test_multibyte_utf8() -> None:
    text = "héllo 日本語 🎉 Ω"
    assert decode(("data: " + text + "\n\n").encode()) == [E(data=text)]
    assert decode(("event: ü\nid: 🎉\ndata: x\n\n").encode()) == [E("ü", "x", "🎉")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\n\n") == [E(data="a\ufffdb")]
    # A truncated sequence before a line end is one replacement character (the CR/LF is not
    # swallowed by it).
    assert decode(b"data: a\xe2\x82\ndata: b\n\n") == [E(data="a\ufffd\nb")]
    assert decode(b"data: \xe2\x82\r\n\r\n") == [E(data="\ufffd")]
    # Overlong and surrogate encodings are invalid too.
    assert decode(b"data: \xc0\xaf\xed\xa0\x80\n\n") == [E(data="\ufffd" * 5)]


def test_invalid_utf8_in_field_name_makes_unknown_field() -> None:
    assert decode(b"dat\xe1: x\ndata: y\n\n") == [E(data="y")]


def test_utf8_split_inside_a_character_across_reads() -> None:
    line = "data: 🎉é\n\n".encode()
    for cut in range(len(line)):
        events, _, _ = run([line[:cut], line[cut:]])
        assert events == [E(data="🎉é")], cut


# --- size limit and linear cost -------------------------------------------------------------


def test_event_too_large_in_one_read() -> None:
    # The limit bounds the data and every line ("data: " + 94 bytes is a 100-byte line).
    dec = SSEDecoder(max_event_size=100)
    assert dec.feed(b"data: " + b"x" * 94 + b"\n\n") == [E(data="x" * 94)]
    assert dec.feed(b"data: ok\n\n" * 50) == [E(data="ok")] * 50
    with pytest.raises(rk.EventTooLarge):
        SSEDecoder(max_event_size=100).feed(b"data: " + b"x" * 95 + b"\n\n")
    with pytest.raises(rk.EventTooLarge):  # the same event in the middle of a bigger read
        SSEDecoder(max_event_size=100).feed(b"data: a\n\ndata: " + b"x" * 95 + b"\n\n")


def test_event_too_large_across_many_data_lines() -> None:
    dec = SSEDecoder(max_event_size=1000)
    with pytest.raises(rk.EventTooLarge) as info:
        for _ in range(200):
            dec.feed(b"data: 0123456789\n")
    assert not info.value.retryable
    assert isinstance(info.value, rk.StreamError)


def test_event_too_large_while_the_line_is_still_arriving() -> None:
    # No line end ever comes: the decoder must refuse before buffering much past the limit.
    dec = SSEDecoder(max_event_size=10_000)
    fed = 0
    with pytest.raises(rk.EventTooLarge):
        for _ in range(1000):
            dec.feed(b"x" * 1000)
            fed += 1000
    assert fed <= 10_000  # the read that crossed the limit raised


def test_event_too_large_for_long_comment_lines() -> None:
    with pytest.raises(rk.EventTooLarge):
        SSEDecoder(max_event_size=64).feed(b":" + b"c" * 100 + b"\n")


def test_limit_counts_one_event_not_the_stream() -> None:
    dec = SSEDecoder(max_event_size=64)
    events = []
    for _ in range(1000):
        events += dec.feed(b"data: " + b"y" * 50 + b"\n\n")
    assert len(events) == 1000


def test_big_event_in_small_reads_is_copied_a_bounded_number_of_times() -> None:
    # Linear cost: the bytes of earlier reads may be copied again only a constant number of
    # times overall (at most ~5), however small the reads are; a naive buffer re-joins the
    # whole prefix on every read: ~n^2 / (2 * read) bytes, thousands of times more here.
    size = 4 * 2**20
    body = b"data: " + b"x" * size + b"\n\n"
    for read in (1024, 4096, 65536):
        dec = SSEDecoder()
        events = []
        for i in range(0, len(body), read):
            events += dec.feed(body[i : i + read])
        assert events == [E(data="x" * size)]
        assert dec._recopied <= 5 * len(body), read


def test_many_line_big_event_in_small_reads_is_linear() -> None:
    line = b"data: " + b"z" * 90 + b"\n"
    body = line * 40_000 + b"\n"
    dec = SSEDecoder()
    events = []
    for i in range(0, len(body), 1000):
        events += dec.feed(body[i : i + 1000])
    assert len(events) == 1
    assert len(events[0].data) == 40_000 * 91 - 1
    assert dec._recopied <= 5 * len(body)


def test_byte_by_byte_long_line_is_linear() -> None:
    body = b"data: " + b"q" * 50_000 + b"\n\n"
    dec = SSEDecoder()
    events = []
    for i in range(len(body)):
        events += dec.feed(body[i : i + 1])
    assert events == [E(data="q" * 50_000)]
    assert dec._recopied <= 5 * len(body)


# --- API ------------------------------------------------------------------------------------


def test_events_are_frozen_values() -> None:
    ev = decode(b"data: a\n\n")[0]
    assert ev == SSEEvent(event="message", data="a", id="", retry=None)
    assert hash(ev) == hash(SSEEvent(data="a"))
    with pytest.raises(AttributeError):
        ev.data = "b"  # type: ignore[misc]


def test_decoded_events_behave_like_constructed_ones() -> None:
    # The decoder builds events without going through __init__; nothing may tell them apart.
    ev = decode(b"event: e\nid: 1\nretry: 5\ndata: a\n\n")[0]
    fast = decode(b"data: a\n\n")[0]
    assert ev == SSEEvent("e", "a", "1", 5)
    assert repr(fast) == repr(SSEEvent(data="a"))
    assert pickle.loads(pickle.dumps(fast)) == fast
    assert copy.deepcopy(ev) == ev
    assert fast._replace(data="b") == SSEEvent(data="b")
    assert ev._asdict() == {"event": "e", "data": "a", "id": "1", "retry": 5}
    assert type(ev) is SSEEvent and type(fast) is SSEEvent


def test_accepts_bytearray_and_memoryview() -> None:
    dec = SSEDecoder()
    assert dec.feed(bytearray(b"data: a\n")) == []
    assert dec.feed(memoryview(b"\ndata: b\n\n")) == [E(data="a"), E(data="b")]


def test_close_is_final() -> None:
    dec = SSEDecoder()
    dec.feed(b"data: a\n\n")
    assert dec.close() == []
    assert dec.close() == []
    with pytest.raises(RuntimeError):
        dec.feed(b"data: b\n\n")


def test_invalid_max_event_size() -> None:
    with pytest.raises(ValueError):
        SSEDecoder(max_event_size=0)


def test_realistic_openai_stream_in_odd_reads() -> None:
    body = (
        b'data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"id":"c1","choices":[{"delta":{"content":"lo \xe2\x9c\x93"}}]}\n\n'
        b": keep-alive\n\n"
        b'data: {"id":"c1","choices":[],"usage":{"total_tokens":3}}\n\n'
        b"data: [DONE]\n\n"
    )
    events = decode(body)
    assert [e.data for e in events] == [
        '{"id":"c1","choices":[{"delta":{"content":"Hel"}}]}',
        '{"id":"c1","choices":[{"delta":{"content":"lo ✓"}}]}',
        '{"id":"c1","choices":[],"usage":{"total_tokens":3}}',
        "[DONE]",
    ]


def test_realistic_anthropic_stream() -> None:
    body = (
        b"event: message_start\r\n"
        b'data: {"type":"message_start"}\r\n\r\n'
        b"event: ping\r\ndata: {}\r\n\r\n"
        b"event: content_block_delta\r\n"
        b'data: {"type":"content_block_delta","delta":{"text":"hi"}}\r\n\r\n'
        b"event: message_stop\r\ndata: {}\r\n\r\n"
    )
    events = decode(body)
    assert [e.event for e in events] == [
        "message_start",
        "ping",
        "content_block_delta",
        "message_stop",
    ]


def test_long_non_data_lines_in_small_reads() -> None:
    # Long id / event / comment lines and "data:" without a space take the long-line path when
    # they arrive in reads much smaller than themselves.
    long_id = "i" * 5000
    body = (
        b"id: " + long_id.encode() + b"\n"
        b": " + b"c" * 5000 + b"\n"
        b"event: " + b"e" * 5000 + b"\n"
        b"data:" + b"y" * 5000 + b"\n" + b"data: \xc3\xa9\n" * 1000 + b"\n"
    )
    expected = [E("e" * 5000, "y" * 5000 + "\n" + "\n".join(["é"] * 1000), long_id)]
    for read in (7, 100, 999):
        events, last_id, _ = run([body[i : i + read] for i in range(0, len(body), read)])
        assert events == expected, read
        assert last_id == long_id
