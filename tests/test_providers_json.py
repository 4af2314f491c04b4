"""The adapters' JSON reader: exactly ``json.loads``, however the data is laid out."""

from __future__ import annotations

import json

import pytest

import rakka_trio as rk
from rakka_trio._providers._base import loads
from rakka_trio._providers.openai_chat import OpenAIChatAdapter

CASES = [
    '{"a":1}',
    ' {"a": 1}',  # whitespace around the value: the compact fast path does not apply
    '{"a": 1}\n',
    '\t{"a": [1, 2.5, "x", null, true]}  ',
    '{"s":"caf\\u00e9 \\ud83d\\ude00","n":-0.0,"big":123456789012345678901234567890}',
    '{"nan": NaN, "inf": Infinity}',  # json.loads accepts these; so must the reader
    "[1, 2]",
    '"text"',
    "42",
    "null",
    '{"a":1}x',  # trailing data
    '{"a":1} {"b":2}',  # two values
    '{"a":',  # truncated
    "",
    "   ",
    "{'a': 1}",
    "\ufeff{}",  # a BOM is not JSON whitespace
]


@pytest.mark.parametrize("data", CASES)
def test_the_json_reader_answers_exactly_as_json_loads(data: str) -> None:
    try:
        expected = json.loads(data)
    except ValueError as exc:
        with pytest.raises(type(exc)) as caught:
            loads(data)
        assert str(caught.value) == str(exc)
    else:
        got = loads(data)
        assert repr(got) == repr(expected)  # repr: NaN != NaN, and -0.0 == 0.0


@pytest.mark.parametrize("data", ['{"choices": []} trailing', "[1]", " 7 "])
def test_a_chunk_that_is_not_one_json_object_is_a_stream_error(data: str) -> None:
    adapter = OpenAIChatAdapter(endpoint="ep")
    with pytest.raises(rk.StreamError) as caught:
        adapter.feed(rk.SSEEvent(data=data))
    assert caught.value.code == "malformed_event"
