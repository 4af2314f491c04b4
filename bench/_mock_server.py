"""Run the loopback mock provider in its own process for benchmarks.

Usage: ``python bench/_mock_server.py [--chunks N] [--retry-after SECONDS]``.

The first line on stdout is JSON with the ports: ``{"healthy": PORT}``, plus ``"limited"``
with ``--retry-after``: a second provider that answers every request ``429`` with that
``Retry-After``. The server runs until stdin closes (so it never outlives the benchmark that
started it), then prints a JSON report: requests seen by each provider and, for the limited
one, how many arrived inside a Retry-After window it had announced.

A request counts as *inside* when it arrived more than ``GRACE`` seconds after a 429 and
before that 429's Retry-After ran out. Requests inside a Retry-After only because of a 429
sent less than ``GRACE`` before they arrived were most likely already on their way when it
went out (the client could not know yet); they are reported separately as ``in_flight``.
"""

from __future__ import annotations

import argparse
import bisect
import json

import trio

from rakka_trio.testing import Fault, MockProvider, RecordedRequest, serve_mock_provider

REPLY = "The quick brown fox jumps over the lazy dog. " * 4
GRACE = 0.05
RECORDED = 1_000_000


def retry_after_report(records: list[RecordedRequest], retry_after: float) -> dict[str, int]:
    """Count requests arriving inside a Retry-After announced by an earlier 429."""
    arrivals = sorted(records, key=lambda r: r.received_at)
    limited = [r.received_at for r in arrivals if r.status == 429]
    inside = in_flight = 0
    for rec in arrivals:
        t = rec.received_at
        # The latest 429 the client could have seen, and the latest one at all, before t.
        seen = bisect.bisect_left(limited, t - GRACE) - 1
        latest = bisect.bisect_left(limited, t) - 1
        if seen >= 0 and t < limited[seen] + retry_after:
            inside += 1
        elif latest >= 0 and t < limited[latest] + retry_after:
            in_flight += 1
    return {"requests": len(records), "inside_retry_after": inside, "in_flight": in_flight}


async def main(chunks: int, retry_after: float | None) -> None:
    healthy = MockProvider(chunks=chunks, reply=REPLY, max_recorded=0)
    limited = MockProvider(chunks=chunks, reply=REPLY, max_recorded=RECORDED)
    async with trio.open_nursery() as nursery:
        ports = {"healthy": (await nursery.start(serve_mock_provider, healthy)).port}
        if retry_after is not None:
            limited.add_fault("openai", Fault.rate_limited(retry_after))
            ports["limited"] = (await nursery.start(serve_mock_provider, limited)).port
        print(json.dumps(ports), flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):
            pass
        report: dict[str, object] = {"healthy": {"requests": healthy.statistics().requests}}
        if retry_after is not None:
            report["limited"] = retry_after_report(limited.requests, retry_after)
        print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--retry-after", type=float, default=None)
    args = parser.parse_args()
    trio.run(main, args.chunks, args.retry_after)
