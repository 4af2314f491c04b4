"""P4: SSE decoding throughput and linear cost in event size.

A 50 MB OpenAI-style chat-completion stream (``data: {chunk json}\\n\\n`` events, some
multi-byte text, a usage chunk and ``[DONE]``) is generated in memory and decoded from reads of
64 KiB and of ~260 bytes (roughly one event per read, as a slow network delivers it) by:

* the floor: ``bytes.split(b"\\n\\n")`` with the unterminated tail carried over (no field
  parsing, no text decoding: not a decoder, just the cost of finding events);
* rakka-trio's :class:`~rakka_trio.SSEDecoder`;
* httpx-sse's decoder as its ``aiter_sse`` drives it: httpx's incremental text decoder,
  ``SSELineDecoder`` and ``SSEDecoder`` (run synchronously, no I/O);
* the openai package's ``openai._streaming.SSEDecoder.iter_bytes``.

Every decoder's events are first checked to be identical (a prefix of the stream, untimed), so
the race is between equivalent results. All figures are measured in this run;
events are dropped as they are produced, as a streaming consumer would. Every decoder runs
once per repeat in a rotating order; the table shows MB/s from the median time. Goals:
rakka-trio >= 2x httpx-sse and >= 50 % of the bytes.split floor.

Second table: one 4 MiB and one 16 MiB event fed in 1 KiB reads; linear cost means the
16 MiB event takes about 4x as long, not 16x.
"""

from __future__ import annotations

import functools
import gc
import json
import random
import time
from collections.abc import Callable, Iterable

from _harness import Row, alternate, median, print_table
from httpx._decoders import TextDecoder
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder as HttpxLineDecoder
from openai._streaming import SSEDecoder as OpenAISSEDecoder

from rakka_trio import SSEDecoder

STREAM_BYTES = 50_000_000
READS = {"64 KiB reads": 65536, "260-byte reads": 260}
REPEATS = 5
CHECK_BYTES = 2_000_000

# A decoder under test: reads in, number of events out.
Decoder = Callable[[Iterable[bytes]], int]


def make_stream(size: int, seed: int = 4) -> bytes:
    """An OpenAI chat-completions stream of about ``size`` bytes."""
    rng = random.Random(seed)
    words = [
        " the",
        " model",
        " streams",
        " tokens",
        " quickly",
        ",",
        ".",
        " é",
        " 日本",
        " 🎉",
        "\n",
    ]
    head = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    parts: list[bytes] = []
    total = 0
    while total < size:
        content = "".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        chunk = {
            **head,
            "choices": [
                {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
            ],
            "usage": None,
        }
        # The API sends non-ASCII text as raw UTF-8, not \\u escapes.
        body = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
        event = b"data: " + body.encode() + b"\n\n"
        parts.append(event)
        total += len(event)
    usage = {"prompt_tokens": 19, "completion_tokens": len(parts), "total_tokens": len(parts) + 19}
    parts.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def cut(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


# --- the contenders: each returns the number of events ---------------------------------------


def floor_split(reads: Iterable[bytes]) -> int:
    n = 0
    tail = b""
    for read in reads:
        blocks = (tail + read).split(b"\n\n")
        tail = blocks.pop()
        n += len(blocks)
    return n


def rakka(reads: Iterable[bytes]) -> int:
    decoder = SSEDecoder()
    n = 0
    for read in reads:
        n += len(decoder.feed(read))
    return n + len(decoder.close())


def httpx_sse(reads: Iterable[bytes]) -> int:
    # The pipeline of httpx_sse.EventSource.aiter_sse: Response.aiter_text() (httpx's
    # incremental TextDecoder), SSELineDecoder, then SSEDecoder line by line.
    text = TextDecoder("utf-8")
    lines = HttpxLineDecoder()
    decoder = HttpxSSEDecoder()
    n = 0
    for read in reads:
        for line in lines.decode(text.decode(read)):
            if decoder.decode(line.rstrip("\n")) is not None:
                n += 1
    for line in lines.flush():
        if decoder.decode(line.rstrip("\n")) is not None:
            n += 1
    return n


def openai_sse(reads: Iterable[bytes]) -> int:
    return sum(1 for _ in OpenAISSEDecoder().iter_bytes(iter(reads)))


def check_equivalent(stream: bytes) -> None:
    """All three decoders must produce the same events before their speed means anything."""
    prefix = stream[:CHECK_BYTES]
    prefix = prefix[: prefix.rfind(b"\n\n") + 2]
    reads = cut(prefix, 1000)
    decoder = SSEDecoder()
    ours = [(e.event, e.data) for r in reads for e in decoder.feed(r)]
    text, lines, hd = TextDecoder("utf-8"), HttpxLineDecoder(), HttpxSSEDecoder()
    theirs = []
    for r in reads:
        for line in lines.decode(text.decode(r)):
            ev = hd.decode(line.rstrip("\n"))
            if ev is not None:
                theirs.append((ev.event or "message", ev.data))
    oai = [(e.event or "message", e.data) for e in OpenAISSEDecoder().iter_bytes(iter(reads))]
    assert ours == theirs == oai, "decoders disagree; the benchmark would be meaningless"


def seconds_of(fn: Decoder, reads: list[bytes], expect: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    n = fn(reads)
    elapsed = time.perf_counter() - t0
    assert n == expect, f"{fn.__name__} produced {n} events, expected {expect}"
    return elapsed


FLOOR = "bytes.split floor"
OURS = "rakka-trio SSEDecoder"
PEER = "httpx-sse"


def throughput_tables(stream: bytes) -> None:
    expect = stream.count(b"\n\n")
    contenders: dict[str, Decoder] = {
        FLOOR: floor_split,
        OURS: rakka,
        PEER: httpx_sse,
        "openai SSEDecoder": openai_sse,
    }
    mb = len(stream) / 1e6
    for label, size in READS.items():
        reads = cut(stream, size)
        runs = alternate(
            {
                name: functools.partial(seconds_of, fn, reads, expect)
                for name, fn in contenders.items()
            },
            REPEATS,
        )
        rate = {name: mb / median(times) for name, times in runs.items()}
        checked = size == READS["64 KiB reads"]  # the goals are set for 64 KiB reads
        events = {name: expect / median(times) / 1e6 for name, times in runs.items()}
        note = {name: f"{events[name]:5.2f} M events/s" for name in runs}
        rows = [
            Row(FLOOR, rate[FLOOR], "MB/s", note[FLOOR] + "  floor: finds events, parses nothing"),
            Row(OURS, rate[OURS], "MB/s", note[OURS], goal=(">=", 2.0) if checked else None),
            Row(PEER, rate[PEER], "MB/s", note[PEER] + "  peer (as its aiter_sse runs it)"),
            Row(
                "openai SSEDecoder",
                rate["openai SSEDecoder"],
                "MB/s",
                note["openai SSEDecoder"] + "  peer",
            ),
            Row(
                "rakka-trio, share of the floor",
                rate[OURS],
                "MB/s",
                f"{100 * rate[OURS] / rate[FLOOR]:.0f} % of the bytes.split floor",
                vs=FLOOR,
                goal=(">=", 0.5) if checked else None,
            ),
        ]
        print_table(
            f"P4 SSE decode, {mb:.0f} MB OpenAI-style stream ({expect:,} events), {label} "
            f"(median of {REPEATS} alternating repeats)",
            rows,
            baseline=PEER,
            goal=">= 2x httpx-sse and >= 50 % of the bytes.split floor on 64 KiB reads, "
            "exact to the spec",
            higher_is_better=True,
        )


def big_event_seconds(size: int, read: int = 1024) -> float:
    body = b"data: " + b"x" * size + b"\n\n"
    reads = cut(body, read)
    decoder = SSEDecoder()
    gc.collect()
    t0 = time.perf_counter()
    events = []
    for r in reads:
        events += decoder.feed(r)
    elapsed = time.perf_counter() - t0
    assert len(events) == 1 and len(events[0].data) == size
    return elapsed


def linear_table() -> None:
    runs = alternate(
        {
            "4 MiB event": functools.partial(big_event_seconds, 4 * 2**20),
            "16 MiB event": functools.partial(big_event_seconds, 16 * 2**20),
        },
        REPEATS,
    )
    small, large = median(runs["4 MiB event"]), median(runs["16 MiB event"])
    print_table(
        f"P4b one huge event fed in 1 KiB reads (median of {REPEATS} alternating repeats)",
        [
            Row("4 MiB event", small * 1e3, "ms", "4,096 reads"),
            Row(
                "16 MiB event",
                large * 1e3,
                "ms",
                "16,384 reads; linear ~4x, quadratic ~16x",
                goal=("<=", 5.0),
            ),
        ],
        baseline="4 MiB event",
        goal="linear cost: 4x the size takes ~4x the time",
    )


def run() -> None:
    """Print the P4 tables."""
    stream = make_stream(STREAM_BYTES)
    check_equivalent(stream)
    throughput_tables(stream)
    linear_table()


if __name__ == "__main__":
    run()
