"""Hold many read-only viewer connections to a control server, in their own process (so
their CPU is not the application's).

Usage: ``python bench/_viewers.py URL COUNT``, then commands on stdin, one per line:

* ``connect``: open COUNT websocket connections, each saying ``hello`` without a valid token
  (so the server admits it as a viewer), wait for every ``welcome`` and print
  ``connected COUNT``; each connection then reads frames until told otherwise;
* ``disconnect``: close them all and print ``closed FRAMES`` (frames read since ``connect``).

End of stdin closes everything and exits.
"""

from __future__ import annotations

import json
import sys

import trio
import trio_websocket
from _harness import LineReader

HELLO = json.dumps({"type": "hello", "token": None, "client": "bench-viewer"})
HANDSHAKES = 32  # connections being set up at once


class Viewers:
    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.count = count
        self.frames = 0
        self.welcomed = 0
        self.all_welcomed = trio.Event()
        self.handshakes = trio.CapacityLimiter(HANDSHAKES)
        self.closed = trio.Event()

    async def one(self) -> None:
        async with self.handshakes:
            ws = await trio_websocket.connect_websocket_url(self._nursery, self.url)
            await ws.send_message(HELLO)
            welcome = json.loads(await ws.get_message())
        if welcome.get("role") != "viewer":
            raise RuntimeError(f"expected the viewer role, got {welcome!r}")
        self.welcomed += 1
        if self.welcomed == self.count:
            self.all_welcomed.set()
        try:
            while True:
                await ws.get_message()
                self.frames += 1
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.count):
                nursery.start_soon(self.one)
            await self.all_welcomed.wait()
            task_status.started()


async def hold(
    viewers: Viewers, scope: trio.CancelScope, task_status: trio.TaskStatus[None]
) -> None:
    """Run ``viewers`` until ``scope`` is cancelled; started once all are welcomed."""
    with scope:
        await viewers.run(task_status=task_status)
    viewers.closed.set()


async def main(url: str, count: int) -> None:
    commands = LineReader(trio.lowlevel.FdStream(sys.stdin.fileno()))
    held: tuple[Viewers, trio.CancelScope] | None = None
    async with trio.open_nursery() as nursery:
        while (command := await commands.readline()) is not None:
            if command == "connect" and held is None:
                viewers = Viewers(url, count)
                held = viewers, trio.CancelScope()
                await nursery.start(hold, viewers, held[1])
                print(f"connected {count}", flush=True)
            elif command == "disconnect" and held is not None:
                viewers, scope = held
                scope.cancel()
                await viewers.closed.wait()
                print(f"closed {viewers.frames}", flush=True)
                held = None
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
