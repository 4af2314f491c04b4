"""Helpers shared by the control-plane tests: a running supervisor + control server on
127.0.0.1 port 0, and a thin raw websocket peer that speaks JSON frames."""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket
from trio_websocket import CloseReason, ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

import rakka_trio as rk

TOKEN = "operator-token-7f3a9c2e51"
"""The operator token every test server uses (long enough for the redactor to know it)."""


def supervisor_config(
    *names: str, stats_interval: float = 3600.0, **kw: Any
) -> rk.SupervisorConfig:
    """Endpoints that never see traffic; stats are effectively off unless asked for."""
    endpoints = [
        rk.EndpointConfig(name=n, provider="openai", base_url="http://127.0.0.1:1")
        for n in (names or ("a", "b"))
    ]
    return rk.SupervisorConfig(endpoints=endpoints, stats_interval=stats_interval, **kw)


@asynccontextmanager
async def control_server(
    *names: str, stats_interval: float = 3600.0, **server_kw: Any
) -> AsyncIterator[tuple[rk.Supervisor, rk.ControlServer]]:
    """A supervisor and its control server; both stop when the block ends."""
    server_kw.setdefault("token", TOKEN)
    async with (
        rk.open_supervisor(supervisor_config(*names, stats_interval=stats_interval)) as sup,
        trio.open_nursery() as nursery,
    ):
        srv = await nursery.start(
            functools.partial(rk.serve_control, sup, "127.0.0.1", 0, **server_kw)
        )
        try:
            yield sup, srv
        finally:
            nursery.cancel_scope.cancel()


class Peer:
    """A websocket client that sends and receives raw frames (no client library)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send a dict as JSON, or a str/bytes frame as is."""
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        await self.ws.send_message(frame)

    async def recv(self) -> dict[str, Any]:
        """The next frame, parsed. (Every test bounds its time with ``trio.fail_after``.)"""
        message = await self.ws.get_message()
        assert isinstance(message, str), "the server sent a binary frame"
        frame: dict[str, Any] = json.loads(message)
        self.received.append(frame)
        return frame

    async def recv_until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame matching ``predicate`` (others are skipped)."""
        while True:
            frame = await self.recv()
            if predicate(frame):
                return frame

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """The first frame of type ``kind``."""
        return await self.recv_until(lambda f: f["type"] == kind)

    async def hello(self, token: str | None = TOKEN, client: str = "tester") -> dict[str, Any]:
        """Say hello and return the server's answer."""
        await self.send({"type": "hello", "token": token, "client": client})
        return await self.recv()

    async def closed(self) -> CloseReason:
        """Read (and keep) frames until the server closes; the close reason."""
        while True:
            try:
                await self.recv()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason


@asynccontextmanager
async def peer(url: str) -> AsyncIterator[Peer]:
    """A raw websocket connection to ``url``."""
    async with trio_websocket.open_websocket_url(
        url, connect_timeout=5, disconnect_timeout=2, max_message_size=64 * 2**20
    ) as ws:
        yield Peer(ws)


@asynccontextmanager
async def operator(url: str, client: str = "tester") -> AsyncIterator[Peer]:
    """A raw connection that has said hello with the operator token."""
    async with peer(url) as p:
        welcome = await p.hello(TOKEN, client)
        assert welcome["type"] == "welcome" and welcome["role"] == "operator", welcome
        yield p


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds. Polls, because the conditions are server counters
    that have no event to wait on; the caller's ``fail_after`` bounds it."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)


class RawPeer:
    """A websocket client on a bare socket with a tiny receive buffer, for tests that need
    a peer which stops reading (its kernel buffers fill almost at once) or misbehaves below
    the protocol."""

    def __init__(self, stream: trio.SocketStream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn
        self._parts: list[str] = []
        self._ready: list[dict[str, Any]] = []
        self.close_code: int | None = None  # the server's close code, once received
        self.rejected: int | None = None  # the HTTP status if the upgrade was refused

    @classmethod
    async def open_tcp(
        cls, port: int, *, rcvbuf: int | None = 4096, source: str | None = None
    ) -> RawPeer:
        """A TCP connection (from ``source``, e.g. ``127.0.0.2``), no websocket upgrade yet."""
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connecting, so the advertised window is small from the start.
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        return cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        rcvbuf: int | None = 4096,
        source: str | None = None,
        origin: str | None = None,
    ) -> RawPeer:
        """Connect and complete the websocket upgrade (nothing else is read). If the server
        refuses the upgrade, ``rejected`` holds its HTTP status."""
        peer = await cls.open_tcp(port, rcvbuf=rcvbuf, source=source)
        headers = [] if origin is None else [(b"Origin", origin.encode())]
        request = Request(host="127.0.0.1", target="/", extra_headers=headers)
        await peer.stream.send_all(peer.conn.send(request))
        while True:
            data = await peer.stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("the server closed during the handshake")
            peer.conn.receive_data(data)
            for event in peer._events():
                if isinstance(event, AcceptConnection):
                    return peer
                if isinstance(event, RejectConnection):
                    peer.rejected = event.status_code
                    return peer

    def _events(self) -> list[Any]:
        events = list(self.conn.events())
        for event in events:
            if isinstance(event, CloseConnection):
                self.close_code = event.code
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self._ready.append(json.loads("".join(self._parts)))
                    self._parts.clear()
        return events

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one JSON text frame."""
        await self.stream.send_all(self.conn.send(TextMessage(data=json.dumps(frame))))

    async def recv(self) -> dict[str, Any] | None:
        """The next complete frame; ``None`` once the server has gone (EOF or reset)."""
        while not self._ready:
            try:
                data = await self.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            try:
                self.conn.receive_data(data)
                self._events()
            except RemoteProtocolError:
                return None  # cut off mid-frame: the server dropped us
        return self._ready.pop(0)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (frames built by :func:`client_frame`, or garbage)."""
        await self.stream.send_all(data)

    async def until_closed(self) -> int | None:
        """Read until the server hangs up; its close code (``None``: no close frame)."""
        while await self.recv() is not None:
            pass
        return self.close_code

    async def aclose(self) -> None:
        """Drop the TCP connection."""
        await self.stream.aclose()

    async def reset(self) -> None:
        """Abort the TCP connection with a reset (RST) instead of a clean close."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame, built by hand so it can carry what wsproto would refuse to
    send (invalid UTF-8, say). Opcodes: 0 continuation, 1 text, 2 binary, 8 close, 9 ping."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked
