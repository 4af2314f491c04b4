"""The loopback mock LLM provider: every supported provider's API on one real HTTP/1.1 server.

It answers the providers' real routes with their real wire shapes (one ``_wire_*`` module per
wire format, chosen by ``_routes.py``), checks credentials the way each provider reads them,
sends rate-limit headers (``_rate_window.py``), records every request (never a credential),
and plays a scriptable fault plan (``_faults.py``) per route (``_replies.py``).

Order of decisions for one request: route → method → JSON body → credential → request
validation → rate-limit enforcement (when enabled) → fault plan → reply. So a request with a
rejected key or an invalid body never consumes a fault rule, and a fault never answers an
unauthenticated request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs
import trio

from ._faults import Fault, FaultPlan, FaultRule, RouteSelector
from ._plan import IdSource, ReplyPlan, Route, Wire, http_date
from ._rate_window import MockRateLimits, RateWindow
from ._replies import error_fault, format_seconds, play_body, play_stream, reply_plan
from ._routes import ProviderName, RouteMatch, base_url_for, make_wires, match_route, url_for
from ._server import (
    ConnectionAborted,
    HttpRequest,
    MockServer,
    MockServerLimits,
    ResponseWriter,
    serve_http,
)
from ._wire_openai import openai_error

__all__ = [
    "MockProvider",
    "MockRateLimits",
    "MockStatistics",
    "ProviderName",
    "RecordedRequest",
    "serve_mock_provider",
]


@attrs.define(kw_only=True, eq=False)
class RecordedRequest:
    """What the mock saw of one request. Credentials are never stored: only whether the
    request's key matched (``key_matched``; ``None`` when the mock checks no key).

    ``route`` is ``None`` for an unknown path. ``path`` excludes the query string; ``query``
    excludes Gemini's ``key`` parameter. ``json`` is the parsed body (``None`` if it was not
    JSON). ``header_names`` are lowercase, in arrival order, without values. ``received_at`` is
    on the Trio clock. ``fault`` is the kind of fault applied, if any; ``status`` the HTTP status
    sent. ``outcome`` is updated in place once the response ends: ``"pending"`` while it is
    being produced, then ``"ok"``, ``"content_filter"``, ``"http_<status>"`` for an error
    response, ``"truncated"``, ``"mid_stream_error"``, ``"reset"`` or ``"disconnected"`` (the
    client went away, or the server stopped, first).
    """

    index: int
    route: Route | None
    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    header_names: tuple[str, ...]
    key_matched: bool | None = None
    stream: bool = False
    model: str | None = None
    received_at: float
    fault: str | None = None
    status: int | None = None
    outcome: str = "pending"


@attrs.frozen(kw_only=True)
class MockStatistics:
    """Counts since the mock was created (or :meth:`MockProvider.clear_requests`).

    ``by_route`` counts requests as they arrive (unknown paths under ``"unknown"``);
    ``by_outcome`` and ``by_route_outcome`` count finished responses by outcome (see
    :class:`RecordedRequest`); ``by_fault`` counts applied faults by kind; ``pending`` is the
    number of responses still in progress.
    """

    requests: int
    pending: int
    by_route: dict[str, int]
    by_outcome: dict[str, int]
    by_fault: dict[str, int]
    by_route_outcome: dict[str, dict[str, int]]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class MockProvider:
    """A scriptable loopback LLM provider: real HTTP/1.1, real provider wire shapes.

    Start it inside a nursery; it binds ``127.0.0.1`` on a free port by default::

        mock = MockProvider(reply="Hello from the mock provider.", chunks=8, api_key="sk-mock-1")
        server = await nursery.start(serve_mock_provider, mock)
        base_url = mock.base_url_for("openai")        # http://127.0.0.1:PORT/v1
        mock.add_fault("openai", Fault.status(503), times=5)

    Every reply is ``reply`` (cut to the request's max-tokens limit, in words) streamed in
    ``chunks`` pieces, ``chunk_delay`` seconds apart. Usage is deterministic: input tokens are
    the words of prompt text in the request, output tokens the words of the output. A request
    declaring tools gets a call of the first (or forced) tool with ``tool_arguments`` (default
    ``{"text": reply}``) unless its last message is a tool result. Anthropic requests with
    ``thinking`` enabled, and Gemini requests with ``includeThoughts``, get ``thinking`` first.

    The ``openai-compatible`` route imitates a reasoning server: every reply starts with
    ``thinking`` in ``compat_reasoning_field`` deltas (``"reasoning_content"`` as DeepSeek and
    vLLM send, ``"reasoning"`` as Groq and OpenRouter do, ``None`` for none), and
    ``compat_sends_done=False`` ends its streams without ``[DONE]``. The ``azure-openai`` route
    serves deployment URLs with Azure's content-filter results.

    ``api_key``: requests must carry this key the way the provider expects (OpenAI
    ``Authorization: Bearer``, Anthropic ``x-api-key``, Gemini ``x-goog-api-key`` or ``?key=``,
    Azure ``api-key``) or get the provider's 401; ``None`` checks nothing. Only a SHA-256 digest
    of the key is kept.
    ``strict`` validates requests the way the providers do (required fields, Anthropic's
    ``anthropic-version`` header) and answers the provider's 400 when they are wrong.
    ``seed`` makes ids and probabilistic faults reproducible.

    All methods are synchronous and must be called from the Trio thread that runs the server.
    """

    def __init__(
        self,
        *,
        reply: str = "Hello from the mock provider.",
        chunks: int = 8,
        seed: int = 0,
        api_key: str | None = None,
        chunk_delay: float = 0.0,
        thinking: str = "Let me think about how best to answer this question.",
        tool_arguments: Mapping[str, Any] | None = None,
        rate_limits: MockRateLimits | None = None,
        strict: bool = True,
        server_limits: MockServerLimits | None = None,
        max_recorded: int = 1000,
        compat_reasoning_field: str | None = "reasoning_content",
        compat_sends_done: bool = True,
    ) -> None:
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks must be an int >= 1, got {chunks!r}")
        if not (isinstance(chunk_delay, int | float) and 0 <= chunk_delay < math.inf):
            raise ValueError(f"chunk_delay must be a finite number >= 0, got {chunk_delay!r}")
        if isinstance(max_recorded, bool) or not isinstance(max_recorded, int) or max_recorded < 0:
            raise ValueError(f"max_recorded must be an int >= 0, got {max_recorded!r}")
        self.reply = reply
        self.chunks = chunks
        self.chunk_delay = float(chunk_delay)
        self.thinking = thinking
        self.tool_arguments: Mapping[str, Any] | None = tool_arguments
        self.strict = strict
        self.rate_limits = rate_limits or MockRateLimits()
        self.server_limits = server_limits or MockServerLimits()
        self._key_digest: bytes | None = None if api_key is None else _digest(api_key)
        self._plan = FaultPlan(random.Random(seed))
        self._ids = IdSource(random.Random(f"rakka-mock-ids:{seed}"))
        self._wires = make_wires(
            compat_reasoning_field=compat_reasoning_field, compat_sends_done=compat_sends_done
        )
        self._windows: dict[Route, RateWindow] = {}
        self._records: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._index = 0
        self._servers: list[MockServer] = []
        self._by_route: Counter[str] = Counter()
        self._by_outcome: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._by_route_outcome: dict[str, Counter[str]] = {}
        self._pending = 0
        self._changed = trio.Event()

    def __repr__(self) -> str:
        auth = "key set" if self._key_digest is not None else "no auth"
        where = self._servers[-1].url if self._servers else "not serving"
        return f"<MockProvider {where}, {auth}, {len(self._plan.rules)} fault rules>"

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[MockServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (or :meth:`MockServer.stop`); use with ``nursery.start``,
        which returns the :class:`MockServer` (``.port``, ``.url``)."""
        started: list[MockServer] = []

        def register(server: MockServer) -> None:
            started.append(server)
            self._servers.append(server)

        try:
            await serve_http(
                self._handle,
                host,
                port,
                limits=self.server_limits,
                on_started=register,
                on_change=self._notify,
                task_status=task_status,
            )
        finally:
            for server in started:
                self._servers.remove(server)

    @property
    def server(self) -> MockServer:
        """The most recently started server that is still running."""
        if not self._servers:
            raise RuntimeError("the mock provider is not serving; start it with nursery.start")
        return self._servers[-1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of :attr:`server`."""
        return self.server.url

    def base_url_for(self, provider: ProviderName) -> str:
        """The ``base_url`` an ``EndpointConfig`` for ``provider`` uses to reach this mock,
        following each provider's SDK convention: OpenAI (and Responses) ``.../v1``;
        OpenAI-compatible ``.../compat/v1``; Anthropic and Azure OpenAI the bare origin (the
        client appends ``/v1/messages`` or ``/openai/deployments/...``); Gemini ``.../v1beta``
        (the client appends ``/models/{model}:streamGenerateContent?alt=sse``)."""
        return base_url_for(self.url, provider)

    def url_for(self, route: Route, *, model: str = "gemini-2.0-flash", stream: bool = True) -> str:
        """The full URL of ``route`` (for Gemini: of ``model``'s streaming or unary method; for
        Azure: of deployment ``model``)."""
        return url_for(self.url, route, model=model, stream=stream)

    # --- script -------------------------------------------------------------------------------

    def add_fault(
        self,
        route: RouteSelector,
        fault: Fault,
        *,
        times: int | None = None,
        start: float | None = None,
        end: float | None = None,
        probability: float = 1.0,
    ) -> FaultRule:
        """Apply ``fault`` to requests on ``route`` (``"*"``: every route).

        ``times``: how many requests it hits (``None``: unlimited). ``start``/``end``: a window
        on the Trio clock (:func:`trio.current_time`), ``start <= now < end``. ``probability``:
        each otherwise matching request is hit with this chance, drawn from the seeded RNG.
        Rules are tried in the order added; the first that applies wins and uses up one of its
        ``times``. Returns the rule (see :class:`FaultRule`), which :meth:`remove_fault` takes.
        """
        return self._plan.add(
            route, fault, times=times, start=start, end=end, probability=probability
        )

    def remove_fault(self, rule: FaultRule) -> None:
        """Drop one rule returned by :meth:`add_fault`."""
        self._plan.remove(rule)

    def clear_faults(self, route: RouteSelector | None = None) -> None:
        """Drop every fault rule (or those added for ``route``)."""
        self._plan.clear(route)

    @property
    def faults(self) -> tuple[FaultRule, ...]:
        """The fault rules in matching order."""
        return self._plan.rules

    def rotate_key(self, api_key: str | None) -> None:
        """Accept only ``api_key`` from now on (``None``: stop checking keys). Requests still
        carrying the old key get the provider's 401 until the client rotates too."""
        self._key_digest = None if api_key is None else _digest(api_key)

    # --- observation --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true.

        It is re-checked whenever a request arrives or finishes and whenever a connection opens
        or closes, so ``await mock.wait_for(lambda: mock.statistics().pending == 0)`` returns as
        soon as the server has caught up. Bound it with :func:`trio.fail_after`.
        """
        while not predicate():
            await self._changed.wait()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Recorded requests, oldest first (the most recent ``max_recorded``)."""
        return list(self._records)

    def clear_requests(self) -> None:
        """Forget recorded requests and reset :meth:`statistics` (in-flight ones still finish)."""
        self._records.clear()
        self._by_route.clear()
        self._by_outcome.clear()
        self._by_fault.clear()
        self._by_route_outcome.clear()

    def statistics(self) -> MockStatistics:
        """A snapshot of request counts by route, outcome and fault."""
        return MockStatistics(
            requests=sum(self._by_route.values()),
            pending=self._pending,
            by_route=dict(self._by_route),
            by_outcome=dict(self._by_outcome),
            by_fault=dict(self._by_fault),
            by_route_outcome={k: dict(v) for k, v in self._by_route_outcome.items()},
        )

    # --- request handling ---------------------------------------------------------------------

    def _window(self, route: Route) -> RateWindow:
        window = self._windows.get(route)
        if window is None or window.limits is not self.rate_limits:
            window = self._windows[route] = RateWindow(self.rate_limits)
        return window

    def _key_matches(self, route: Route, request: HttpRequest, query: Mapping[str, str]) -> bool:
        """Whether the request carries the current key where ``route``'s provider reads it."""
        assert self._key_digest is not None
        candidate = self._wires[route].credential(request, query)
        # Compare digests in constant time: the mock never holds the key itself.
        return bool(candidate) and hmac.compare_digest(_digest(candidate or ""), self._key_digest)

    async def _handle(self, request: HttpRequest, writer: ResponseWriter) -> None:
        now = trio.current_time()
        match = match_route(unquote(request.path))
        route = match.route if match is not None else None
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        query.pop("key", None)  # Gemini's credential never reaches the record
        self._index += 1
        rec = RecordedRequest(
            index=self._index,
            route=route,
            method=request.method,
            path=request.path,
            query=query,
            header_names=tuple(name for name, _ in request.headers),
            received_at=now,
        )
        self._records.append(rec)
        route_key = route or "unknown"
        self._by_route[route_key] += 1
        self._pending += 1
        self._notify()
        try:
            await self._respond(request, writer, rec, match, now)
        except ConnectionAborted as exc:
            if rec.outcome == "pending":
                # The armed byte budget ran out; any other abort means the client stopped
                # reading (send timeout).
                planned = exc.reset and rec.fault == "connection_reset"
                rec.outcome = "reset" if planned else "disconnected"
            raise
        finally:
            # Still pending here: the client left, or the server is stopping (Cancelled).
            if rec.outcome == "pending":
                rec.outcome = "disconnected"
            self._pending -= 1
            self._by_outcome[rec.outcome] += 1
            self._by_route_outcome.setdefault(route_key, Counter())[rec.outcome] += 1
            self._notify()

    async def _send_error(
        self,
        writer: ResponseWriter,
        rec: RecordedRequest,
        status: int,
        body: Mapping[str, Any],
        headers: list[tuple[str, str]],
    ) -> None:
        rec.status = status
        await writer.send_json(status, headers, body)
        rec.outcome = f"http_{status}"

    async def _respond(
        self,
        request: HttpRequest,
        writer: ResponseWriter,
        rec: RecordedRequest,
        match: RouteMatch | None,
        now: float,
    ) -> None:
        if match is None:
            base: list[tuple[str, str]] = []
            body = openai_error(404, message=f"Invalid URL ({request.method} {request.path})")
            await self._send_error(writer, rec, 404, body, base)
            return
        route = match.route
        wire = self._wires[route]
        base = wire.response_headers(self._ids)
        request_id = base[0][1] if base else ""
        if request.method != "POST":
            body = wire.error_body(405, message=f"Method {request.method} not allowed.")
            headers = [*base, ("allow", "POST")]
            await self._send_error(writer, rec, 405, body, headers)
            return
        try:
            parsed = json.loads(request.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            parsed = None
            message = wire.parse_error
        else:
            message = "The request body must be a JSON object."
        if not isinstance(parsed, dict):
            body = wire.error_body(400, message=message, request_id=request_id)
            await self._send_error(writer, rec, 400, body, base)
            return
        rec.json = parsed
        rec.stream = match.stream if match.stream is not None else parsed.get("stream") is True
        rec.model = wire.model(parsed, match.model)

        if self._key_digest is not None:
            query = dict(parse_qsl(request.query, keep_blank_values=True))
            rec.key_matched = self._key_matches(route, request, query)
            if not rec.key_matched:
                body = wire.unauthorized_body(request_id)
                await self._send_error(writer, rec, 401, body, base)
                return
        if self.strict:
            problem = wire.validate(parsed, request)
            if problem is not None:
                body = wire.error_body(400, message=problem, request_id=request_id)
                await self._send_error(writer, rec, 400, body, base)
                return

        window = self._window(route)
        plan = self._reply_plan(wire, rec.model or "unknown", parsed, None)
        usage = plan.usage
        if self.rate_limits.enforce and window.exceeded(
            now, usage.input_tokens, usage.output_tokens
        ):
            wait = window.reset_in(now)
            snap = window.snapshot(now, exhausted_for=wait)
            headers = [
                *base,
                *wire.rate_limit_headers(snap, wall_now=time.time()),
                ("retry-after", str(max(1, math.ceil(wait)))),
            ]
            body = wire.error_body(429, request_id=request_id, retry_after=wait)
            await self._send_error(writer, rec, 429, body, headers)
            return

        rule = self._plan.match(route, now)
        fault = rule.fault if rule is not None else None
        if fault is not None:
            rec.fault = fault.kind
            self._by_fault[fault.kind] += 1
            if fault.kind == "content_filter":
                plan = self._reply_plan(wire, rec.model or "unknown", parsed, fault)
        window.charge(now, plan.usage.input_tokens, plan.usage.output_tokens)

        if fault is not None and await self._error_fault(
            writer, rec, wire, fault, base, request_id, window, now
        ):
            return
        snap = window.snapshot(now)
        headers = [*base, *wire.rate_limit_headers(snap, wall_now=time.time())]
        prompt_blocked = (
            fault is not None and fault.kind == "content_filter" and fault.stage == "prompt"
        )
        renderer = wire.stream(
            plan,
            sse=match.stream is None or _alt_sse(request),
            prompt_blocked=prompt_blocked,
        )

        if fault is not None and fault.kind == "connection_reset":
            if fault.after_bytes == 0:
                rec.outcome = "reset"
                raise ConnectionAborted(reset=True)
            writer.reset_after(fault.after_bytes)
        if fault is not None and fault.kind == "slow_first_byte":
            await trio.sleep(fault.delay)
        if fault is not None and fault.kind == "mid_stream_error" and not rec.stream:
            error_type, message = self._stream_error(wire, fault)
            status = wire.status_for_error_type(error_type)
            body = wire.error_body(
                status, error_type=error_type, message=message, request_id=request_id
            )
            await self._send_error(writer, rec, status, body, headers)
            return
        rec.status = 200
        if rec.stream:
            await play_stream(
                writer,
                rec,
                renderer,
                fault,
                headers,
                chunk_delay=self.chunk_delay,
                stream_error=lambda f: self._stream_error(wire, f),
            )
        else:
            await play_body(writer, rec, renderer, fault, headers)

    def _stream_error(self, wire: Wire, fault: Fault) -> tuple[str, str]:
        default_type, default_message = wire.default_stream_error()
        return fault.error_type or default_type, fault.message or default_message

    async def _error_fault(
        self,
        writer: ResponseWriter,
        rec: RecordedRequest,
        wire: Wire,
        fault: Fault,
        base: list[tuple[str, str]],
        request_id: str,
        window: RateWindow,
        now: float,
    ) -> bool:
        """Answer with the error response ``fault`` calls for; False if it is not one."""
        wall = time.time()
        hints: list[tuple[str, str]] = []
        wait: float | None = None
        if fault.retry_after is not None:
            wait = fault.retry_after
            value = http_date(wall + wait) if fault.http_date else format_seconds(wait)
            hints.append(("retry-after", value))
        if fault.retry_after_ms is not None:
            wait = fault.retry_after_ms / 1000.0
            hints.append(("retry-after-ms", format_seconds(fault.retry_after_ms)))
        answer = error_fault(wire, fault, request_id, wait)
        if answer is None:
            return False
        status, body = answer
        exhausted = (wait if wait is not None else window.reset_in(now)) if status == 429 else None
        snap = window.snapshot(now, exhausted_for=exhausted)
        headers = [
            *base,
            *wire.rate_limit_headers(snap, wall_now=wall),
            *hints,
            *fault.headers,
        ]
        await self._send_error(writer, rec, status, body, headers)
        return True

    def _reply_plan(
        self, wire: Wire, model: str, body: Mapping[str, Any], fault: Fault | None
    ) -> ReplyPlan:
        return reply_plan(
            wire,
            self._ids,
            model=model,
            body=body,
            fault=fault,
            reply=self.reply,
            thinking=self.thinking,
            chunks=self.chunks,
            tool_arguments=self.tool_arguments,
        )


def _alt_sse(request: HttpRequest) -> bool:
    """Whether a Gemini streaming request asked for SSE framing (``?alt=sse``)."""
    return any(k == "alt" and v == "sse" for k, v in parse_qsl(request.query))


async def serve_mock_provider(
    mock: MockProvider,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[MockServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``mock`` on ``host:port`` (default: loopback, any free port) until cancelled.

    ``server = await nursery.start(serve_mock_provider, mock)`` returns the
    :class:`MockServer`; ``server.url`` is ``http://127.0.0.1:PORT``.
    """
    await mock.serve(host, port, task_status=task_status)
