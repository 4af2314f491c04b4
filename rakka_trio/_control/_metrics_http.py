"""``GET /metrics`` on the control port: the supervisor's Prometheus text for scrapers.

The control server reads the head of every new connection's first HTTP request (inside the
waiting room, so the same limits and the same deadline hold). A plain ``GET`` or ``HEAD`` of
``/metrics`` — no websocket ``Upgrade`` — is answered here and the connection closed;
anything else goes on to the websocket upgrade with the bytes already read put back in front
of the stream, so the control plane works on the same port as before.

The operator token is required as ``Authorization: Bearer TOKEN`` (compared in constant
time; a wrong one delays the peer's next try like a failed hello) unless the server was
started with ``metrics_public=True``.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Final

import h11
import trio

from .._accounting import prometheus_text
from ._connection import _digest

if TYPE_CHECKING:
    from .._supervisor import Supervisor
    from ._guards import HelloThrottle, LogLimiter

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "MetricsHttp", "PrefixedStream", "read_request_head"]

log = logging.getLogger("rakka_trio.control")

METRICS_PATH: Final = b"/metrics"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD: Final = 16 * 1024  # an HTTP request head larger than this is not a scrape


class PrefixedStream(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) delivered first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send through the wrapped stream."""
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream."""
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The prefix first (up to ``max_bytes``), then the wrapped stream's bytes."""
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max(1, max_bytes)
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return bytes(await self.transport_stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self.transport_stream.aclose()


async def read_request_head(
    stream: trio.abc.Stream,
) -> tuple[bytes, h11.Connection, h11.Request | None]:
    """Read the head of an HTTP request: stops at its end, at the end of the stream, at
    :data:`MAX_HEAD` bytes, or as soon as the bytes cannot be HTTP (the websocket layer then
    answers them as before). Returns everything read, the parser and the request if one was
    parsed (the caller bounds the time)."""
    data = bytearray()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    while len(data) < MAX_HEAD:
        chunk = bytes(await stream.receive_some(MAX_HEAD - len(data)))
        if not chunk:
            break
        data += chunk
        conn.receive_data(chunk)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            break
        if event is not h11.NEED_DATA:
            return bytes(data), conn, event if isinstance(event, h11.Request) else None
    return bytes(data), conn, None


def _is_scrape(request: h11.Request | None) -> bool:
    """Whether ``request`` is a plain ``GET``/``HEAD /metrics`` (no websocket upgrade)."""
    if request is None or request.method not in (b"GET", b"HEAD"):
        return False
    if request.target.split(b"?", 1)[0] != METRICS_PATH:
        return False
    # A websocket upgrade (to any path) is the control plane's.
    return not any(name == b"upgrade" for name, _ in request.headers)


def _bearer(request: h11.Request) -> str | None:
    for name, value in request.headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip().decode("latin-1")
    return None


class MetricsHttp:
    """Answers scrapes of ``/metrics`` for one control server (internal)."""

    def __init__(
        self,
        sup: Supervisor,
        *,
        token_digest: bytes | None,
        public: bool,
        throttle: HelloThrottle,
        log_limiter: LogLimiter,
    ) -> None:
        self._sup = sup
        self._token_digest = token_digest
        self._public = public
        self._throttle = throttle
        self._log = log_limiter
        self.scrapes = 0
        self.refused = 0

    async def intercept(
        self, stream: trio.abc.Stream, key: str, peer: str
    ) -> trio.abc.Stream | None:
        """Serve ``stream`` if it asks for ``/metrics`` (``None``: answered, close it);
        otherwise the stream to run the websocket upgrade on."""
        head, conn, request = await read_request_head(stream)
        if request is None or not _is_scrape(request):
            return PrefixedStream(stream, head)
        if self._public:
            allowed = True
        else:
            ready_at = self._throttle.ready_at(key)
            if ready_at > trio.current_time():
                await trio.sleep_until(ready_at)  # earlier failures from this peer: wait
            allowed = self._authorized(_bearer(request))
            if not allowed:
                self.refused += 1
                delay = self._throttle.record_failure(key)
                self._log.log(
                    log,
                    logging.WARNING,
                    f"metrics:{key}",
                    "control: refused /metrics to %s (no valid bearer token); its next try "
                    "waits %gs",
                    peer,
                    delay,
                )
        if allowed:
            self.scrapes += 1
            body = prometheus_text(self._sup).encode()
            status, content_type = 200, CONTENT_TYPE
        else:
            body = b"the operator token is required: Authorization: Bearer TOKEN\n"
            status, content_type = 401, "text/plain; charset=utf-8"
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="rakka-trio"'))
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if request.method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)
        return None

    def _authorized(self, token: str | None) -> bool:
        digest = self._token_digest
        if token is None or digest is None:
            return False
        return hmac.compare_digest(_digest(token), digest)
