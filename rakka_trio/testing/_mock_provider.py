"""The loopback mock LLM provider: OpenAI, Anthropic and Gemini on one real HTTP/1.1 server.

It answers the providers' real routes with their real wire shapes (see ``_shapes.py``), checks
credentials the way each provider reads them, sends rate-limit headers on every OpenAI and
Anthropic response, records every request (never a credential), and plays a scriptable fault
plan (``_faults.py``) per route.

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
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote

import attrs
import trio

from ._faults import Fault, FaultPlan, FaultRule, RouteSelector
from ._server import (
    ConnectionAborted,
    HttpRequest,
    MockServer,
    MockServerLimits,
    ResponseWriter,
    serve_http,
)
from ._shapes import (
    Finish,
    IdSource,
    ProviderStream,
    RateSnapshot,
    ReplyPlan,
    Route,
    ToolCall,
    Usage,
    count_words,
    default_stream_error,
    error_body,
    http_date,
    rate_limit_headers,
    split_text,
    status_for_error_type,
    stream_for,
)

__all__ = [
    "MockProvider",
    "MockRateLimits",
    "MockStatistics",
    "RecordedRequest",
    "serve_mock_provider",
]

ProviderName = Literal["openai", "openai-responses", "openai-compatible", "anthropic", "gemini"]

_GEMINI_PATH: Final = re.compile(
    r"^/(?:v1beta|v1)/models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent)$"
)
_STATIC_ROUTES: Final[dict[str, Route]] = {
    "/v1/chat/completions": "openai",
    "/v1/responses": "openai-responses",
    "/v1/messages": "anthropic",
}
_WORD_RE: Final = re.compile(r"\s*\S+")
# Keys under which request JSON holds prompt text, for every provider's request shape.
_TEXT_KEYS: Final = frozenset({"content", "text", "parts", "input", "output", "system"})


_PARSE_ERRORS: Final[dict[Route, str]] = {
    "openai": "We could not parse the JSON body of your request. (HINT: This likely means "
    "you aren't using your HTTP library correctly.)",
    "openai-responses": "We could not parse the JSON body of your request. (HINT: This likely "
    "means you aren't using your HTTP library correctly.)",
    "anthropic": "There was an issue with your request body: it is not valid JSON.",
    "gemini": "Invalid JSON payload received.",
}


@attrs.frozen(kw_only=True)
class MockRateLimits:
    """The limits the mock reports in its rate-limit headers, per route, over a fixed window.

    Every authenticated, valid request uses one request and its input plus output tokens (the
    mock's word counts). With ``enforce=True`` a request that would exceed a limit gets a real
    429 (with ``Retry-After`` until the window resets) instead of an answer.
    """

    requests_per_minute: int = 10_000
    tokens_per_minute: int = 2_000_000
    input_tokens_per_minute: int = 2_000_000
    output_tokens_per_minute: int = 400_000
    window: float = 60.0
    enforce: bool = False

    def __attrs_post_init__(self) -> None:
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.window, int | float) and self.window > 0):
            raise ValueError(f"window must be > 0, got {self.window!r}")


class _RateWindow:
    """Fixed-window usage of one route, on the Trio clock."""

    def __init__(self, limits: MockRateLimits) -> None:
        self.limits = limits
        self.start: float | None = None
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def _roll(self, now: float) -> None:
        if self.start is None or now >= self.start + self.limits.window:
            self.start = now
            self.requests = self.input_tokens = self.output_tokens = 0

    def reset_in(self, now: float) -> float:
        self._roll(now)
        assert self.start is not None
        return self.start + self.limits.window - now

    def exceeded(self, now: float, input_tokens: int, output_tokens: int) -> bool:
        self._roll(now)
        lim = self.limits
        return (
            self.requests + 1 > lim.requests_per_minute
            or self.input_tokens + self.output_tokens + input_tokens + output_tokens
            > lim.tokens_per_minute
            or self.input_tokens + input_tokens > lim.input_tokens_per_minute
            or self.output_tokens + output_tokens > lim.output_tokens_per_minute
        )

    def charge(self, now: float, input_tokens: int, output_tokens: int) -> None:
        self._roll(now)
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def snapshot(self, now: float, *, exhausted_for: float | None = None) -> RateSnapshot:
        lim = self.limits
        reset = self.reset_in(now)
        tokens_used = self.input_tokens + self.output_tokens
        requests_remaining = max(0, lim.requests_per_minute - self.requests)
        requests_reset = reset
        if exhausted_for is not None:  # a 429: say so in the headers, as providers do
            requests_remaining = 0
            requests_reset = exhausted_for
        return RateSnapshot(
            requests_limit=lim.requests_per_minute,
            requests_remaining=requests_remaining,
            requests_reset=requests_reset,
            tokens_limit=lim.tokens_per_minute,
            tokens_remaining=max(0, lim.tokens_per_minute - tokens_used),
            tokens_reset=reset,
            input_tokens_limit=lim.input_tokens_per_minute,
            input_tokens_remaining=max(0, lim.input_tokens_per_minute - self.input_tokens),
            output_tokens_limit=lim.output_tokens_per_minute,
            output_tokens_remaining=max(0, lim.output_tokens_per_minute - self.output_tokens),
        )


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


def _format_seconds(value: float) -> str:
    # Whole numbers as providers send them ("2"); fractions to the millisecond ("0.25").
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _prompt_words(route: Route, body: Mapping[str, Any]) -> int:
    """Words of prompt text in a request body: the mock's deterministic input token count."""
    if route == "openai":
        roots: list[Any] = [body.get("messages")]
    elif route == "openai-responses":
        roots = [body.get("instructions"), body.get("input")]
    elif route == "anthropic":
        roots = [body.get("system"), body.get("messages")]
    else:
        roots = [body.get("systemInstruction"), body.get("contents")]
    # Iterative walk: a hostile body nested a thousand levels deep must not blow the stack.
    total = 0
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += count_words(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(v for k, v in node.items() if k in _TEXT_KEYS)
    return total


def _first_words(text: str, n: int) -> str:
    words = _WORD_RE.findall(text)
    return "".join(words[:n])


def _int_field(obj: Any, *path: str) -> int | None:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, int) and not isinstance(obj, bool) and obj >= 0 else None


def _max_tokens(route: Route, body: Mapping[str, Any]) -> int | None:
    if route == "openai":
        return _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    if route == "openai-responses":
        return _int_field(body, "max_output_tokens")
    if route == "anthropic":
        return _int_field(body, "max_tokens")
    return _int_field(body, "generationConfig", "maxOutputTokens")


def _wants_thinking(route: Route, body: Mapping[str, Any]) -> bool:
    if route == "anthropic":
        thinking = body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    if route == "gemini":
        cfg = body.get("generationConfig")
        tc = cfg.get("thinkingConfig") if isinstance(cfg, dict) else None
        return isinstance(tc, dict) and tc.get("includeThoughts") is True
    return False


def _last(items: Any) -> Any:
    return items[-1] if isinstance(items, list) and items else None


def _answered_tool(route: Route, body: Mapping[str, Any]) -> bool:
    """Whether the conversation ends with a tool result (then a model answers in text)."""
    if route == "openai":
        last = _last(body.get("messages"))
        return isinstance(last, dict) and last.get("role") == "tool"
    if route == "openai-responses":
        last = _last(body.get("input"))
        return isinstance(last, dict) and last.get("type") == "function_call_output"
    if route == "anthropic":
        last = _last(body.get("messages"))
        content = last.get("content") if isinstance(last, dict) else None
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
    last = _last(body.get("contents"))
    parts = last.get("parts") if isinstance(last, dict) else None
    return isinstance(parts, list) and any(
        isinstance(p, dict) and "functionResponse" in p for p in parts
    )


def _tool_name(route: Route, body: Mapping[str, Any]) -> str | None:
    """The function the mock "model" calls: the forced one, else the first declared one; none
    when tools are absent, disabled, or the last message already carries a tool result."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or _answered_tool(route, body):
        return None
    names: list[str] = []
    forced: str | None = None
    choice = body.get("tool_choice")
    if route == "openai":
        for t in tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.append(fn["name"])
        if choice == "none":
            return None
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            forced = choice["function"].get("name")
    elif route == "openai-responses":
        names = [
            t["name"]
            for t in tools
            if isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("name"), str)
        ]
        if choice == "none":
            return None
        if isinstance(choice, dict) and choice.get("type") == "function":
            forced = choice.get("name")
    elif route == "anthropic":
        names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        if isinstance(choice, dict):
            if choice.get("type") == "none":
                return None
            if choice.get("type") == "tool":
                forced = choice.get("name")
    else:
        for t in tools:
            decls = t.get("functionDeclarations") if isinstance(t, dict) else None
            if isinstance(decls, list):
                names += [
                    d["name"]
                    for d in decls
                    if isinstance(d, dict) and isinstance(d.get("name"), str)
                ]
        cfg = body.get("toolConfig")
        fcc = cfg.get("functionCallingConfig") if isinstance(cfg, dict) else None
        if isinstance(fcc, dict):
            if fcc.get("mode") == "NONE":
                return None
            allowed = fcc.get("allowedFunctionNames")
            if isinstance(allowed, list) and allowed and isinstance(allowed[0], str):
                forced = allowed[0]
    if isinstance(forced, str) and forced:
        return forced
    return names[0] if names else None


def _validate(route: Route, body: Mapping[str, Any], request: HttpRequest) -> str | None:
    """The provider's complaint about a malformed request, or ``None``."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "'stream' must be a boolean."
    if route == "gemini":
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        return None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter"
    if route == "openai":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "Missing required parameter: 'messages'."
        if body.get("stream_options") is not None and stream is not True:
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    elif route == "openai-responses":
        if not isinstance(body.get("input"), str | list):
            return "Missing required parameter: 'input'."
    else:
        if request.header("anthropic-version") is None:
            return "anthropic-version: header is required"
        if not isinstance(body.get("messages"), list):
            return "messages: Field required"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return "max_tokens: Field required"
    return None


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

    ``api_key``: requests must carry this key the way the provider expects (OpenAI
    ``Authorization: Bearer``, Anthropic ``x-api-key``, Gemini ``x-goog-api-key`` or ``?key=``)
    or get the provider's 401; ``None`` checks nothing. Only a SHA-256 digest of the key is kept.
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
        self._windows: dict[Route, _RateWindow] = {}
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
        following each provider's SDK convention: OpenAI (and Responses, and OpenAI-compatible)
        ``.../v1``; Anthropic the bare origin (the client appends ``/v1/messages``); Gemini
        ``.../v1beta`` (the client appends ``/models/{model}:streamGenerateContent?alt=sse``)."""
        url = self.url
        if provider in ("openai", "openai-responses", "openai-compatible"):
            return f"{url}/v1"
        if provider == "anthropic":
            return url
        if provider == "gemini":
            return f"{url}/v1beta"
        raise ValueError(f"unknown provider {provider!r}")

    def url_for(self, route: Route, *, model: str = "gemini-2.0-flash", stream: bool = True) -> str:
        """The full URL of ``route`` (for Gemini: of ``model``'s streaming or unary method)."""
        url = self.url
        if route == "gemini":
            if stream:
                return f"{url}/v1beta/models/{model}:streamGenerateContent?alt=sse"
            return f"{url}/v1beta/models/{model}:generateContent"
        paths = {v: k for k, v in _STATIC_ROUTES.items()}
        if route not in paths:
            raise ValueError(f"unknown route {route!r}")
        return url + paths[route]

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

    def _window(self, route: Route) -> _RateWindow:
        window = self._windows.get(route)
        if window is None or window.limits is not self.rate_limits:
            window = self._windows[route] = _RateWindow(self.rate_limits)
        return window

    def _key_matches(self, route: Route, request: HttpRequest, query: Mapping[str, str]) -> bool:
        """Whether the request carries the current key where ``route``'s provider reads it."""
        assert self._key_digest is not None
        auth = request.header("authorization")
        bearer = auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None
        if route == "anthropic":  # x-api-key, or an OAuth bearer token
            candidate = request.header("x-api-key") or bearer
        elif route == "gemini":  # x-goog-api-key, ?key=, or an OAuth bearer token
            candidate = request.header("x-goog-api-key") or query.get("key") or bearer
        else:
            candidate = bearer
        # Compare digests in constant time: the mock never holds the key itself.
        return bool(candidate) and hmac.compare_digest(_digest(candidate or ""), self._key_digest)

    def _headers(self, route: Route | None) -> list[tuple[str, str]]:
        if route == "anthropic":
            return [("request-id", "req_011C" + self._ids.alnum(20))]
        if route in ("openai", "openai-responses"):
            return [
                ("x-request-id", "req_" + self._ids.hex(32)),
                ("openai-version", "2020-10-01"),
                ("openai-processing-ms", "1"),
            ]
        return []

    async def _handle(self, request: HttpRequest, writer: ResponseWriter) -> None:
        now = trio.current_time()
        path = unquote(request.path)
        route: Route | None = _STATIC_ROUTES.get(path)
        path_model: str | None = None
        gemini_method = ""
        m = _GEMINI_PATH.match(path)
        if m is not None:
            route, path_model, gemini_method = "gemini", m["model"], m["method"]
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
            await self._respond(request, writer, rec, route, path_model, gemini_method, now)
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
        route: Route | None,
        path_model: str | None,
        gemini_method: str,
        now: float,
    ) -> None:
        base = self._headers(route)
        if route is None:
            body = error_body(None, 404, message=f"Invalid URL ({request.method} {request.path})")
            await self._send_error(writer, rec, 404, body, base)
            return
        request_id = base[0][1] if base else ""
        if request.method != "POST":
            body = error_body(route, 405, message=f"Method {request.method} not allowed.")
            headers = [*base, ("allow", "POST")]
            await self._send_error(writer, rec, 405, body, headers)
            return
        try:
            parsed = json.loads(request.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            parsed = None
            message = _PARSE_ERRORS[route]
        else:
            message = "The request body must be a JSON object."
        if not isinstance(parsed, dict):
            body = error_body(route, 400, message=message, request_id=request_id)
            await self._send_error(writer, rec, 400, body, base)
            return
        rec.json = parsed
        if gemini_method:
            rec.stream = gemini_method == "streamGenerateContent"
            rec.model = path_model
        else:
            rec.stream = parsed.get("stream") is True
            model = parsed.get("model")
            rec.model = model if isinstance(model, str) else None

        if self._key_digest is not None:
            query = dict(parse_qsl(request.query, keep_blank_values=True))
            rec.key_matched = self._key_matches(route, request, query)
            if not rec.key_matched:
                body = self._unauthorized_body(route, request_id)
                await self._send_error(writer, rec, 401, body, base)
                return
        if self.strict:
            problem = _validate(route, parsed, request)
            if problem is not None:
                body = error_body(route, 400, message=problem, request_id=request_id)
                await self._send_error(writer, rec, 400, body, base)
                return

        window = self._window(route)
        plan = self._reply_plan(route, rec.model or "unknown", parsed, None)
        usage = plan.usage
        if self.rate_limits.enforce and window.exceeded(
            now, usage.input_tokens, usage.output_tokens
        ):
            wait = window.reset_in(now)
            snap = window.snapshot(now, exhausted_for=wait)
            headers = [
                *base,
                *rate_limit_headers(route, snap, wall_now=time.time()),
                ("retry-after", str(max(1, math.ceil(wait)))),
            ]
            body = error_body(route, 429, request_id=request_id, retry_after=wait)
            await self._send_error(writer, rec, 429, body, headers)
            return

        rule = self._plan.match(route, now)
        fault = rule.fault if rule is not None else None
        if fault is not None:
            rec.fault = fault.kind
            self._by_fault[fault.kind] += 1
            if fault.kind == "content_filter":
                plan = self._reply_plan(route, rec.model or "unknown", parsed, fault)
        window.charge(now, plan.usage.input_tokens, plan.usage.output_tokens)

        if fault is not None and await self._error_fault(
            writer, rec, route, fault, base, request_id, window, now
        ):
            return
        snap = window.snapshot(now)
        headers = [*base, *rate_limit_headers(route, snap, wall_now=time.time())]
        prompt_blocked = (
            fault is not None
            and fault.kind == "content_filter"
            and fault.stage == "prompt"
            and route == "gemini"
        )
        renderer = stream_for(
            plan,
            gemini_sse=(not gemini_method) or _alt_sse(request),
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
            error_type, message = self._stream_error(route, fault)
            status = status_for_error_type(route, error_type)
            body = error_body(
                route, status, error_type=error_type, message=message, request_id=request_id
            )
            await self._send_error(writer, rec, status, body, headers)
            return
        rec.status = 200
        if rec.stream:
            await self._play_stream(writer, rec, route, renderer, fault, headers)
        else:
            await self._play_body(writer, rec, renderer, fault, headers)

    def _unauthorized_body(self, route: Route, request_id: str) -> dict[str, Any]:
        if route == "gemini":
            # Google answers a bad key with 400 API_KEY_INVALID; the mock uses the 401
            # UNAUTHENTICATED shape Google sends for rejected credentials, so every provider's
            # credential failure exercises the same rotate-and-retry path.
            return error_body(route, 401, message="API key not valid. Please pass a valid API key.")
        return error_body(route, 401, request_id=request_id)

    def _stream_error(self, route: Route, fault: Fault) -> tuple[str, str]:
        default_type, default_message = default_stream_error(route)
        return fault.error_type or default_type, fault.message or default_message

    async def _error_fault(
        self,
        writer: ResponseWriter,
        rec: RecordedRequest,
        route: Route,
        fault: Fault,
        base: list[tuple[str, str]],
        request_id: str,
        window: _RateWindow,
        now: float,
    ) -> bool:
        """Answer with the error response ``fault`` calls for; False if it is not one."""
        wall = time.time()
        hints: list[tuple[str, str]] = []
        wait: float | None = None
        if fault.retry_after is not None:
            wait = fault.retry_after
            value = http_date(wall + wait) if fault.http_date else _format_seconds(wait)
            hints.append(("retry-after", value))
        if fault.retry_after_ms is not None:
            wait = fault.retry_after_ms / 1000.0
            hints.append(("retry-after-ms", _format_seconds(fault.retry_after_ms)))
        kind = fault.kind
        if kind == "status":
            assert fault.status_code is not None
            status = fault.status_code
            body = error_body(
                route,
                status,
                error_type=fault.error_type,
                code=fault.code,
                message=fault.message,
                request_id=request_id,
                retry_after=wait,
            )
        elif kind == "rate_limited":
            status = 429
            body = error_body(
                route, 429, message=fault.message, request_id=request_id, retry_after=wait
            )
        elif kind == "insufficient_quota":
            if route == "anthropic":
                status = 402
                body = error_body(route, 402, request_id=request_id)
            elif route == "gemini":
                status = 429
                body = error_body(
                    route,
                    429,
                    message="You exceeded your current quota, please check your plan and "
                    "billing details.",
                )
            else:
                status = 429
                body = error_body(
                    route,
                    429,
                    error_type="insufficient_quota",
                    code="insufficient_quota",
                    message="You exceeded your current quota, please check your plan and "
                    "billing details. For more information on this error, read the docs: "
                    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                )
        elif kind == "unauthorized":
            status = 401
            body = self._unauthorized_body(route, request_id)
        elif (
            kind == "content_filter"
            and fault.stage == "prompt"
            and route
            in (
                "openai",
                "openai-responses",
            )
        ):
            status = 400
            body = error_body(
                route,
                400,
                code="content_filter",
                message="The response was filtered due to the prompt triggering content "
                "management policy. Please modify your prompt and retry.",
            )
        else:
            return False
        exhausted = (wait if wait is not None else window.reset_in(now)) if status == 429 else None
        snap = window.snapshot(now, exhausted_for=exhausted)
        headers = [
            *base,
            *rate_limit_headers(route, snap, wall_now=wall),
            *hints,
            *fault.headers,
        ]
        await self._send_error(writer, rec, status, body, headers)
        return True

    def _reply_plan(
        self, route: Route, model: str, body: Mapping[str, Any], fault: Fault | None
    ) -> ReplyPlan:
        ids = self._ids
        text = self.reply
        finish: Finish = "stop"
        limit = _max_tokens(route, body)
        if limit is not None and count_words(text) > limit:
            text = _first_words(text, limit)
            finish = "length"
        thinking_pieces: tuple[str, ...] = ()
        if _wants_thinking(route, body):
            thinking_pieces = split_text(self.thinking, self.chunks)
        tool: ToolCall | None = None
        name = _tool_name(route, body)
        filtered = fault is not None and fault.kind == "content_filter"
        if name is not None and not filtered:
            args = self.tool_arguments if self.tool_arguments is not None else {"text": self.reply}
            arguments = json.dumps(dict(args), ensure_ascii=False)
            call_id = (
                "toolu_01" + ids.alnum(22) if route == "anthropic" else "call_" + ids.alnum(24)
            )
            tool = ToolCall(
                name=name,
                call_id=call_id,
                item_id="fc_" + ids.hex(48),
                arguments=arguments,
                argument_pieces=split_text(arguments, self.chunks),
            )
            finish = "tool"
        text_pieces = split_text(text, self.chunks)
        if filtered:
            assert fault is not None
            keep = 0 if fault.stage == "prompt" else fault.after_chunks
            text_pieces = text_pieces[:keep]
            thinking_pieces = () if fault.stage == "prompt" else thinking_pieces
            finish = "filter"
        thinking_words = count_words("".join(thinking_pieces))
        output = thinking_words + (
            count_words(tool.arguments) if tool is not None else count_words("".join(text_pieces))
        )
        if route == "gemini" and filtered and fault is not None and fault.stage == "prompt":
            output = 0
        if route == "anthropic":
            response_id = "msg_01" + ids.alnum(22)
        elif route == "openai":
            response_id = "chatcmpl-" + ids.alnum(29)
        elif route == "openai-responses":
            response_id = "resp_" + ids.hex(48)
        else:
            response_id = ids.alnum(22)
        stream_options = body.get("stream_options")
        return ReplyPlan(
            route=route,
            model=model,
            response_id=response_id,
            item_id="msg_" + ids.hex(48),
            created=int(time.time()),
            text_pieces=text_pieces,
            thinking_pieces=thinking_pieces,
            signature=ids.signature() if thinking_pieces else "",
            tool=tool,
            finish=finish,
            usage=Usage(
                input_tokens=_prompt_words(route, body),
                output_tokens=output,
                thinking_tokens=thinking_words,
            ),
            include_usage=isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True,
            system_fingerprint="fp_" + ids.hex(10),
        )

    async def _play_stream(
        self,
        writer: ResponseWriter,
        rec: RecordedRequest,
        route: Route,
        renderer: ProviderStream,
        fault: Fault | None,
        headers: list[tuple[str, str]],
    ) -> None:
        kind = fault.kind if fault is not None else None
        armed = kind in ("stall", "truncate", "mid_stream_error")
        await writer.start(
            200,
            [*headers, ("content-type", renderer.content_type), ("cache-control", "no-cache")],
        )
        if not armed and not self.chunk_delay:
            # Nothing paces or interrupts this stream: write it in one piece (the same bytes,
            # one chunk on the wire), so the mock is not what limits a throughput benchmark.
            await writer.write(b"".join(frame.data for frame in renderer.frames()))
            await writer.end()
            rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"
            return
        sent = 0
        for frame in renderer.frames():
            if frame.kind == "chunk" and sent and self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            # A positioned fault strikes before the chunk that would exceed after_chunks, or
            # before the stream's closing frames when there are fewer chunks than that.
            if (
                armed
                and fault is not None
                and frame.kind != "meta"
                and (frame.kind == "closing" or sent >= fault.after_chunks)
            ):
                armed = False
                if fault.kind == "stall":
                    await trio.sleep(fault.delay)
                elif fault.kind == "truncate":
                    rec.outcome = "truncated"
                    if fault.close_connection:
                        raise ConnectionAborted(reset=False)
                    await writer.end()
                    return
                else:
                    error_type, message = self._stream_error(route, fault)
                    for data in renderer.error_frames(error_type, message):
                        await writer.write(data)
                    await writer.end()
                    rec.outcome = "mid_stream_error"
                    return
            await writer.write(frame.data)
            if frame.kind == "chunk":
                sent += 1
        await writer.end()
        rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"

    async def _play_body(
        self,
        writer: ResponseWriter,
        rec: RecordedRequest,
        renderer: ProviderStream,
        fault: Fault | None,
        headers: list[tuple[str, str]],
    ) -> None:
        data = json.dumps(renderer.body(), ensure_ascii=False, separators=(",", ":")).encode()
        hdrs = [*headers, ("content-type", "application/json")]
        kind = fault.kind if fault is not None else None
        await writer.start(200, hdrs, content_length=len(data))
        if kind == "stall":
            assert fault is not None
            await trio.sleep(fault.delay)
        elif kind == "truncate":
            # Half the promised Content-Length, then FIN: the client sees an incomplete body.
            await writer.write(data[: len(data) // 2])
            rec.outcome = "truncated"
            raise ConnectionAborted(reset=False)
        await writer.write(data)
        await writer.end()
        rec.outcome = "content_filter" if renderer.plan.finish == "filter" else "ok"


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
