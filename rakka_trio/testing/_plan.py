"""What every wire format of the mock shares: the reply plan, frames, ids, and the route interface.

The mock decides *what* the "model" says once, as a :class:`ReplyPlan`; a :class:`Wire` (one
per route, in the ``_wire_*`` modules) knows how its provider reads requests and turns a plan
into the bytes that provider would send. Pure functions and renderers, no I/O.
"""

from __future__ import annotations

import abc
import base64
import json
import math
import random
import re
import string
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

if TYPE_CHECKING:
    from ._server import HttpRequest

__all__ = [
    "ROUTES",
    "TEXT_KEYS",
    "Finish",
    "Frame",
    "FrameKind",
    "IdSource",
    "ProviderStream",
    "RateSnapshot",
    "ReplyPlan",
    "Route",
    "ToolCall",
    "Usage",
    "Wire",
    "bearer",
    "count_words",
    "dumps",
    "go_duration",
    "http_date",
    "int_field",
    "last",
    "prompt_words",
    "rfc3339",
    "split_text",
    "sse",
    "words",
]

Route = Literal[
    "openai", "openai-responses", "anthropic", "gemini", "azure-openai", "openai-compatible"
]
ROUTES: Final[tuple[Route, ...]] = (
    "openai",
    "openai-responses",
    "anthropic",
    "gemini",
    "azure-openai",
    "openai-compatible",
)

# Why the plan ended, in neutral terms; each renderer maps it to its provider's vocabulary.
Finish = Literal["stop", "length", "tool", "filter"]
FrameKind = Literal["meta", "chunk", "closing"]

_ALNUM: Final = string.ascii_letters + string.digits
_WORD_RE: Final = re.compile(r"\s*\S+")
# Keys under which request JSON holds prompt text, for every provider's request shape.
TEXT_KEYS: Final = frozenset({"content", "text", "parts", "input", "output", "system"})


def dumps(obj: Any) -> str:
    """Compact JSON in UTF-8 rather than ``\\u`` escapes: real providers stream raw UTF-8,
    which is what exercises a client's decoding of characters split across reads."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(payload: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event: ``event:`` line when given, one ``data:`` line, blank line."""
    data = payload if isinstance(payload, str) else dumps(payload)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class IdSource:
    """Provider-shaped identifiers drawn from a seeded RNG, so a seeded mock is reproducible."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def alnum(self, n: int) -> str:
        """``n`` random ASCII letters and digits."""
        return "".join(self._rng.choices(_ALNUM, k=n))

    def hex(self, n: int) -> str:
        """``n`` random lowercase hex digits."""
        return "".join(self._rng.choices("0123456789abcdef", k=n))

    def signature(self) -> str:
        """An opaque base64 blob like Anthropic's thinking-block signatures."""
        return base64.b64encode(self._rng.randbytes(48)).decode("ascii")


# --- plan ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts of one reply. ``output_tokens`` includes ``thinking_tokens``."""

    input_tokens: int
    output_tokens: int
    thinking_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output."""
        return self.input_tokens + self.output_tokens


@attrs.frozen(kw_only=True)
class ToolCall:
    """A function call the mock "model" makes instead of answering in text."""

    name: str
    call_id: str  # call_... (OpenAI), toolu_... (Anthropic); Gemini has none
    item_id: str  # fc_... output item id (Responses API)
    arguments: str  # JSON text
    argument_pieces: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ReplyPlan:
    """Everything a renderer needs to produce one provider response, decided up front."""

    route: Route
    model: str
    response_id: str
    item_id: str  # Responses API message item id; Anthropic request id for error bodies
    created: int  # Unix seconds, as providers report them
    text_pieces: tuple[str, ...]
    thinking_pieces: tuple[str, ...] = ()
    signature: str = ""
    tool: ToolCall | None = None
    finish: Finish = "stop"
    usage: Usage
    include_usage: bool = False  # OpenAI chat: stream_options.include_usage
    system_fingerprint: str = ""

    @property
    def text(self) -> str:
        """The whole text answer."""
        return "".join(self.text_pieces)

    @property
    def thinking(self) -> str:
        """The whole thinking text."""
        return "".join(self.thinking_pieces)


def split_text(text: str, pieces: int) -> tuple[str, ...]:
    """Split ``text`` into ``pieces`` contiguous parts whose concatenation is ``text``.

    Parts break at word boundaries (leading whitespace stays with its word, the way tokenizers
    emit ``" world"``) when there are at least ``pieces`` words, and at character boundaries
    otherwise. Part sizes differ by at most one word (or character). Fewer parts come back only
    when ``text`` has fewer than ``pieces`` characters; empty text gives no parts.
    """
    if pieces < 1:
        raise ValueError("pieces must be >= 1")
    if not text:
        return ()
    words: list[str] = _WORD_RE.findall(text)
    if len(words) >= pieces:
        tail = text[sum(map(len, words)) :]  # trailing whitespace, if any
        words[-1] += tail
        units = words
    else:
        units = list(text)
    n = min(pieces, len(units))
    size, extra = divmod(len(units), n)
    out: list[str] = []
    i = 0
    for k in range(n):
        step = size + (1 if k < extra else 0)
        out.append("".join(units[i : i + step]))
        i += step
    return tuple(out)


def count_words(text: str) -> int:
    """The mock's deterministic "token" count: whitespace-separated words."""
    return len(text.split())


def int_field(obj: Any, *path: str) -> int | None:
    """The non-negative integer at ``path`` inside nested objects, else ``None``."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, int) and not isinstance(obj, bool) and obj >= 0 else None


def last(items: Any) -> Any:
    """The last element of a non-empty list, else ``None``."""
    return items[-1] if isinstance(items, list) and items else None


def prompt_words(*roots: Any) -> int:
    """Words of prompt text under ``roots`` (strings, lists, and the text keys of objects)."""
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
            stack.extend(v for k, v in node.items() if k in TEXT_KEYS)
    return total


def bearer(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    auth = request.header("authorization")
    return auth[7:].strip() if auth and auth[:7].lower() == "bearer " else None


def words(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (with their leading whitespace)."""
    return "".join(_WORD_RE.findall(text)[:n])


# --- frames ----------------------------------------------------------------------------------


@attrs.frozen
class Frame:
    """One write of a streamed body.

    ``kind`` tells the player where faults may strike: ``meta`` frames carry no output (stream
    start, block boundaries, pings) and are never a fault point; each ``chunk`` frame carries one
    piece of output (text, thinking or tool-call arguments) and counts towards ``after_chunks``;
    ``closing`` frames finish the stream (finish reason, usage, terminal marker).
    """

    data: bytes
    kind: FrameKind


class ProviderStream:
    """Base of the per-provider renderers: frames of a stream, its error event, a full body."""

    content_type: str = "text/event-stream; charset=utf-8"

    def __init__(self, plan: ReplyPlan) -> None:
        self.plan = plan

    def frames(self) -> Iterator[Frame]:
        """The streamed body, frame by frame."""
        raise NotImplementedError

    def error_frames(self, error_type: str, message: str) -> list[bytes]:
        """What the provider sends when generation fails after the stream has started."""
        raise NotImplementedError

    def body(self) -> dict[str, Any]:
        """The non-streaming JSON response for the same plan."""
        raise NotImplementedError


# --- rate-limit headers ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RateSnapshot:
    """Limits and what is left of them after a request, with seconds until each resets."""

    requests_limit: int
    requests_remaining: int
    requests_reset: float
    tokens_limit: int
    tokens_remaining: int
    tokens_reset: float
    input_tokens_limit: int
    input_tokens_remaining: int
    output_tokens_limit: int
    output_tokens_remaining: int


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String`` at millisecond precision, as OpenAI's
    ``x-ratelimit-reset-*`` headers do: ``"20ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def rfc3339(wall: float) -> str:
    """A whole-second RFC 3339 UTC timestamp (rounded up), as Anthropic's reset headers."""
    moment = datetime.fromtimestamp(math.ceil(wall), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def http_date(wall: float) -> str:
    """An IMF-fixdate (RFC 9110), e.g. for ``Retry-After`` and ``Date``."""
    moment = datetime.fromtimestamp(0, UTC) + timedelta(seconds=math.ceil(wall))
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


# --- the route interface ---------------------------------------------------------------------


class Wire(abc.ABC):
    """How one route's provider reads requests and what it sends back.

    The mock's generic request handling asks the wire of the request's route for everything
    provider-specific, so adding a route is one subclass.
    """

    route: Route
    parse_error: str = "We could not parse the JSON body of your request."
    """The provider's message for a body that is not JSON."""

    # --- reading requests ------------------------------------------------------------------

    @abc.abstractmethod
    def prompt_words(self, body: Mapping[str, Any]) -> int:
        """Words of prompt text in a request body: the mock's input token count."""

    @abc.abstractmethod
    def max_tokens(self, body: Mapping[str, Any]) -> int | None:
        """The request's output token limit, if it sets one."""

    def wants_thinking(self, body: Mapping[str, Any]) -> bool:
        """Whether the reply starts with thinking (default: never)."""
        return False

    @abc.abstractmethod
    def tool_name(self, body: Mapping[str, Any]) -> str | None:
        """The function the mock "model" calls: the forced one, else the first declared one;
        ``None`` when tools are absent, disabled, or the last message is a tool result."""

    @abc.abstractmethod
    def validate(self, body: Mapping[str, Any], request: HttpRequest) -> str | None:
        """The provider's complaint about a malformed request, or ``None``."""

    def model(self, body: Mapping[str, Any], path_model: str | None) -> str | None:
        """The model a request names (in the path for some providers)."""
        model = body.get("model")
        return path_model or (model if isinstance(model, str) else None)

    @abc.abstractmethod
    def credential(self, request: HttpRequest, query: Mapping[str, str]) -> str | None:
        """The credential where this provider reads it (``None`` if absent)."""

    # --- answering -------------------------------------------------------------------------

    def response_headers(self, ids: IdSource) -> list[tuple[str, str]]:
        """Headers on every response (request ids ...); the first value is the request id."""
        return []

    @abc.abstractmethod
    def response_id(self, ids: IdSource) -> str:
        """A response id in this provider's format."""

    def call_id(self, ids: IdSource) -> str:
        """A tool call id in this provider's format (default: OpenAI's ``call_...``)."""
        return "call_" + ids.alnum(24)

    @abc.abstractmethod
    def stream(self, plan: ReplyPlan, *, sse: bool, prompt_blocked: bool) -> ProviderStream:
        """The renderer of ``plan`` (``sse``/``prompt_blocked`` only matter to Gemini)."""

    @abc.abstractmethod
    def error_body(
        self,
        status: int,
        *,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        request_id: str = "",
        retry_after: float | None = None,
    ) -> dict[str, Any]:
        """The JSON error body this provider sends with HTTP ``status``; ``None`` fields take
        the provider's usual value for the status."""

    def unauthorized_body(self, request_id: str) -> dict[str, Any]:
        """The body of a 401 for a rejected credential."""
        return self.error_body(401, request_id=request_id)

    @abc.abstractmethod
    def status_for_error_type(self, error_type: str) -> int:
        """The HTTP status the provider pairs with an error type (a mid-stream error hitting a
        non-streaming request can only be reported as a status)."""

    @abc.abstractmethod
    def default_stream_error(self) -> tuple[str, str]:
        """The provider's most common mid-stream failure: ``(error_type, message)``."""

    def quota_error(self, request_id: str) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` for an exhausted quota or credit balance."""
        return 429, self.error_body(
            429,
            error_type="insufficient_quota",
            code="insufficient_quota",
            message="You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        )

    def prompt_filter_error(self, request_id: str) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` when a filtered prompt is refused with an HTTP error; ``None``
        when the provider reports it inside a normal answer instead."""
        return None

    def rate_limit_headers(self, snap: RateSnapshot, *, wall_now: float) -> list[tuple[str, str]]:
        """The provider's rate-limit headers for ``snap`` (default: none)."""
        return []
