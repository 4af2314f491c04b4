"""Run the loopback mock provider in its own process for benchmarks; prints its port.

Usage: ``python bench/_mock_server.py [CHUNKS]``. The first line on stdout is the port; the
server runs until stdin closes (so it never outlives the benchmark that started it).
"""

from __future__ import annotations

import sys

import trio

from rakka_trio.testing import MockProvider, serve_mock_provider


async def main(chunks: int) -> None:
    mock = MockProvider(chunks=chunks, reply="The quick brown fox jumps over the lazy dog. " * 4)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_mock_provider, mock)
        print(server.port, flush=True)
        stdin = trio.lowlevel.FdStream(0)
        while await stdin.receive_some(1024):
            pass
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 16)
