"""Replay recorded provider streams through rakka-trio and through the official SDKs, and diff.

Usage::

    uv run --group bench python bench/recordings.py [--dir PATH] [NAME ...]

``--dir`` is the folder holding ``manifest.json`` and the recorded ``.sse`` files (default:
``../shared/provider-recordings`` relative to the repository root). ``NAME`` selects fixtures
by id (default: all of them).

For every fixture the recorded bytes (sha256 checked against the manifest first) are served
byte for byte from a loopback HTTP server (127.0.0.1, port 0, ``connection: close``, the
manifest's content type) and read twice:

* **rk**: the public pipeline under ``trio.run``: one ``rk.EndpointConfig`` per fixture (provider
  ``openai``, ``openai-compatible``, ``openai-responses``, ``anthropic`` or ``gemini``, retries
  off), ``ep.stream(...)`` collecting every ``rk.StreamChunk`` (aggregated per choice index),
  then ``ep.complete(...)`` on a second request, and ``rk.Completion.from_chunks`` over the
  streamed chunks as a cross-check;
* **sdk**: the official SDK under ``asyncio.run``: ``openai`` chat completions
  (``create(stream=True)`` accumulated by the SDK's ``ChatCompletionStreamState``), ``openai``
  Responses (``responses.stream`` and its ``get_final_response``), ``anthropic``
  (``messages.stream`` and ``get_final_message``), ``google-genai``
  (``aio.models.generate_content_stream``; the SDK has no accumulator, so its typed chunks are
  concatenated per candidate).

Compared per fixture (per choice index when there are several): text, thinking text, thinking
signature (rk: ``thinking_signature`` plus the ``signature`` of Gemini function calls, in
stream order), opaque reasoning (Anthropic ``redacted_thinking`` data, Responses
``encrypted_content``; rk: ``redacted_thinking``), refusal, tool calls (id, name, argument
JSON: the exact string where the SDK keeps one, parsed JSON for Gemini, whose SDK only keeps
the object), finish reason (normalised, see ``_FINISH``), usage (input, output, cached,
cache-write, reasoning tokens, normalised to ``rk.Usage``'s meaning by the ``sdk_*``
readers) and the error outcome (see ``_ERROR_KINDS``). Server-side tool blocks (Anthropic
``server_tool_use``, Responses ``web_search_call``) are not tool calls on either side;
citations are not compared.

Output: one line per difference, ``FIXTURE field: rk=... sdk=...``, then ``N/M match``. Exit
status 1 when any fixture differs (2 for a bad manifest or checksum). A ``FIXTURE note:`` line
is not a difference: it records where the SDK's two ways of reading a stream disagree (the
``responses.stream`` helper rejects a stream that ``responses.create(stream=True)`` reads
without error; the plain API's outcome is the one compared).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anthropic
import h11
import openai
import trio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.lib.streaming.chat import ChatCompletionStreamState

import rakka_trio as rk

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path("..") / "shared" / "provider-recordings"  # relative to REPO_ROOT
TIMEOUT = 30.0  # seconds for one read of one fixture, either side
MODEL = "recorded"
PROMPT = "hi"
RkProvider = Literal["openai", "openai-compatible", "openai-responses", "anthropic", "gemini"]
RK_PROVIDERS: Mapping[tuple[str, str], RkProvider] = {
    # (manifest api, manifest provider) -> rk provider name
    ("openai_chat", "openai"): "openai",
    ("openai_chat", "openai-compatible"): "openai-compatible",
    ("openai_responses", "openai-responses"): "openai-responses",
    ("anthropic", "anthropic"): "anthropic",
    ("gemini", "gemini"): "gemini",
}

# --- normalisation tables -------------------------------------------------------------------------

# Finish reasons, as the SDK reports them, to rk's normalised names ("stop", "length",
# "tool_calls", "content_filter"; anything else: the provider's value in lower case). Two rules
# need the rest of the response: Gemini's STOP and a completed Responses API response mean
# "tool_calls" when the choice made a function call (as OpenAI chat reports it).
_FINISH: Mapping[str, Mapping[str, str]] = {
    "openai_chat": {
        "stop": "stop",
        "length": "length",
        "tool_calls": "tool_calls",
        "function_call": "tool_calls",
        "content_filter": "content_filter",
    },
    "openai_responses": {  # status completed / incomplete_details.reason
        "completed": "stop",
        "max_output_tokens": "length",
        "content_filter": "content_filter",
    },
    "anthropic": {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "model_context_window_exceeded": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    },
    "gemini": {
        "STOP": "stop",
        "MAX_TOKENS": "length",
        **dict.fromkeys(
            (
                "SAFETY",
                "RECITATION",
                "PROHIBITED_CONTENT",
                "BLOCKLIST",
                "SPII",
                "IMAGE_SAFETY",
                "IMAGE_PROHIBITED_CONTENT",
            ),
            "content_filter",
        ),
    },
}

# An error the provider reported inside the stream, by its type or code (the code first, it
# is the more specific) or else its numeric HTTP-like code, to the rk error class a caller
# should get for it. Written from the providers' error documentation, not from rk's code.
_ERROR_KINDS: Mapping[str, str] = {
    "overloaded_error": "Overloaded",
    "rate_limit_error": "RateLimited",
    "rate_limit_exceeded": "RateLimited",
    "insufficient_quota": "QuotaExhausted",
    "context_length_exceeded": "ContextLengthExceeded",
    "invalid_request_error": "BadRequest",
    "invalid_prompt": "BadRequest",
    "authentication_error": "Unauthorized",
    "permission_error": "Forbidden",
    "not_found_error": "NotFound",
    "api_error": "ServerError",
    "server_error": "ServerError",
}
_ERROR_STATUS: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    429: "RateLimited",
    529: "Overloaded",
}

# Outcome categories (the ``error`` field): "ok"; "content_filter" (rk raises ContentFiltered,
# the SDKs report a policy stop as data: finish reason, stop_reason refusal, blockReason);
# "truncated" (rk StreamTruncated; the Responses SDK's "Didn't receive a response.completed");
# "error:<rk class>" (a provider error event: rk's class, or for the SDK the class that
# _ERROR_KINDS names for the payload the SDK raised with); "exception:<type>" (anything else,
# e.g. an SDK that cannot parse the stream).


# --- fixtures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """One recorded response from the manifest, with its verified bytes."""

    id: str
    api: str
    provider: str
    content_type: str
    body: bytes


class ManifestError(Exception):
    """The manifest or a fixture file is missing, unknown or fails its checksum."""


def load_fixtures(directory: Path, names: Sequence[str]) -> list[Fixture]:
    """The fixtures of ``directory/manifest.json`` (only ``names`` if given), each file's
    sha256 checked against the manifest."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    entries = {entry["id"]: entry for entry in manifest}
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise ManifestError(f"unknown fixture(s): {', '.join(unknown)}")
    out = []
    for entry in manifest:
        if names and entry["id"] not in names:
            continue
        body = (directory / entry["file"]).read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        if digest != entry["sha256"]:
            raise ManifestError(f"{entry['id']}: sha256 {digest} != manifest {entry['sha256']}")
        if (entry["api"], entry["provider"]) not in RK_PROVIDERS:
            raise ManifestError(
                f"{entry['id']}: unknown api/provider {entry['api']}/{entry['provider']}"
            )
        out.append(
            Fixture(
                id=entry["id"],
                api=entry["api"],
                provider=entry["provider"],
                content_type=entry["content_type"],
                body=body,
            )
        )
    return out


# --- the loopback server --------------------------------------------------------------------------


class FixtureServer:
    """Serves each fixture's bytes to any request under ``/f/<id>/`` on 127.0.0.1.

    Runs its own Trio loop in a thread, so clients under Trio and under asyncio in the main
    thread can both reach it. Use as a context manager; :meth:`root` is a fixture's URL prefix.
    Every response is ``200`` with the manifest's content type, a content length and
    ``connection: close``; an unknown path gets ``404``.
    """

    def __init__(self, fixtures: Iterable[Fixture]) -> None:
        self._fixtures = {f.id: f for f in fixtures}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fixture-server", daemon=True)
        self._port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._failure: BaseException | None = None
        self.requests: dict[str, int] = {}

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("fixture server failed to start") from self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join()

    def root(self, fixture_id: str) -> str:
        """The URL prefix under which ``fixture_id`` is served."""
        return f"http://127.0.0.1:{self._port}/f/{fixture_id}"

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            self._ready.set()
            await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(TIMEOUT):
                await self._answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away: nothing to answer
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        while True:  # read the request head and (ignored) body
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
        assert request is not None
        parts = request.target.decode("latin-1").split("?", 1)[0].split("/")
        fixture = self._fixtures.get(parts[2]) if len(parts) > 2 and parts[1] == "f" else None
        if fixture is None:
            status, ctype, body = 404, "text/plain", b"no such fixture\n"
        else:
            self.requests[fixture.id] = self.requests.get(fixture.id, 0) + 1
            status, ctype, body = 200, fixture.content_type, fixture.body
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)


# --- what both sides produce ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One complete tool call."""

    id: str | None
    name: str | None
    arguments: str


@dataclass
class Choice:
    """Everything one choice (candidate) produced."""

    text: str = ""
    thinking: str = ""
    signature: str = ""
    opaque: str = ""
    refusal: str = ""
    calls: list[Call] = field(default_factory=list)
    finish: str | None = None


@dataclass(frozen=True)
class UsageView:
    """Token counts with ``rk.Usage``'s meaning (input includes cache reads and writes, output
    includes reasoning)."""

    input: int
    output: int
    cached: int
    cache_write: int
    reasoning: int


@dataclass
class Outcome:
    """One side's reading of one fixture."""

    choices: dict[int, Choice] = field(default_factory=dict)
    usage: UsageView | None = None
    error: str = "ok"
    error_detail: str = ""
    returned: bool = True  # False: a complete() that raised (no Completion to compare)
    notes: list[str] = field(default_factory=list)

    def choice(self, index: int) -> Choice:
        """The choice ``index``, created empty if missing."""
        return self.choices.setdefault(index, Choice())


@dataclass
class RkResult:
    """rk's readings of one fixture: the stream, ``complete()`` and ``from_chunks``."""

    stream: Outcome
    complete: Outcome
    from_chunks: Outcome | None


def _describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {text[:160]}"


# --- rk side --------------------------------------------------------------------------------------


def _rk_error(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "ok", ""
    if isinstance(exc, rk.ContentFiltered):
        kind = "content_filter"
    elif isinstance(exc, rk.StreamTruncated):
        kind = "truncated"
    elif isinstance(exc, rk.ProviderError):
        kind = f"error:{type(exc).__name__}"
    else:
        kind = f"exception:{type(exc).__name__}"
    return kind, _describe(exc)


def _rk_usage(usage: rk.Usage | None) -> UsageView | None:
    if usage is None:
        return None
    return UsageView(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.cache_creation_tokens,
        usage.reasoning_tokens,
    )


def rk_outcome(chunks: Sequence[rk.StreamChunk], exc: BaseException | None) -> Outcome:
    """Aggregate rk stream chunks per choice index (deltas concatenated, the last finish
    reason and usage kept)."""
    out = Outcome()
    deltas: dict[int, dict[int, list[rk.ToolCallDelta]]] = {}
    for chunk in chunks:
        choice = out.choice(chunk.index)
        choice.text += chunk.text
        choice.thinking += chunk.thinking
        choice.signature += chunk.thinking_signature
        choice.signature += "".join(d.signature or "" for d in chunk.tool_calls)
        choice.opaque += chunk.redacted_thinking
        choice.refusal += chunk.refusal
        for delta in chunk.tool_calls:
            deltas.setdefault(chunk.index, {}).setdefault(delta.index, []).append(delta)
        if chunk.finish_reason is not None:
            choice.finish = chunk.finish_reason
        if chunk.usage is not None:
            out.usage = _rk_usage(chunk.usage)
    for index, calls in deltas.items():
        out.choice(index).calls = [
            Call(
                next((d.id for d in parts if d.id), None),
                next((d.name for d in parts if d.name), None),
                "".join(d.arguments_delta for d in parts),
            )
            for _, parts in sorted(calls.items())
        ]
    out.error, out.error_detail = _rk_error(exc)
    return out


def _completion_outcome(done: rk.Completion | None, exc: BaseException | None) -> Outcome:
    out = Outcome(returned=done is not None)
    if done is not None:
        choice = out.choice(0)
        choice.text = done.text
        choice.thinking = done.thinking
        # A Completion keeps a call's signature on the call; compared joined after the
        # thinking signature (the stream's order wherever both occur in one response).
        choice.signature = done.thinking_signature + "".join(
            c.signature or "" for c in done.tool_calls
        )
        choice.opaque = "".join(done.redacted_thinking)
        choice.refusal = done.refusal
        choice.calls = [Call(c.id, c.name, c.arguments) for c in done.tool_calls]
        choice.finish = done.finish_reason
        out.usage = _rk_usage(done.usage)
    out.error, out.error_detail = _rk_error(exc)
    return out


def _rk_request() -> rk.ChatRequest:
    return rk.ChatRequest(model=MODEL, messages=[{"role": "user", "content": PROMPT}])


def _rk_base_url(fixture: Fixture, server: FixtureServer) -> str:
    root = server.root(fixture.id)
    # rk adds /v1 (Anthropic) and /v1beta (Gemini) itself; OpenAI base URLs carry /v1.
    return root if fixture.api in ("anthropic", "gemini") else f"{root}/v1"


async def run_rk(fixtures: Sequence[Fixture], server: FixtureServer) -> dict[str, RkResult]:
    """Read every fixture through rakka-trio's public pipeline (under Trio)."""
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=f.id,
                provider=RK_PROVIDERS[f.api, f.provider],
                base_url=_rk_base_url(f, server),
                model=MODEL,
                retry=rk.RetryPolicy(max_retries=0),
            )
            for f in fixtures
        ]
    )
    results: dict[str, RkResult] = {}
    async with rk.open_supervisor(cfg) as sup:
        for fixture in fixtures:
            ep = sup.endpoint(fixture.id)
            chunks: list[rk.StreamChunk] = []
            stream_exc: BaseException | None = None
            try:
                with trio.fail_after(TIMEOUT):
                    async with ep.stream(_rk_request()) as stream:
                        async for chunk in stream:
                            chunks.append(chunk)
            except Exception as exc:
                stream_exc = exc
            done: rk.Completion | None = None
            complete_exc: BaseException | None = None
            try:
                with trio.fail_after(TIMEOUT):
                    done = await ep.complete(_rk_request())
            except Exception as exc:
                complete_exc = exc
            from_chunks: Outcome | None = None
            if hasattr(rk.Completion, "from_chunks"):
                assembled = rk.Completion.from_chunks(chunks, endpoint=fixture.id, attempts=1)
                from_chunks = _completion_outcome(assembled, stream_exc)
            results[fixture.id] = RkResult(
                stream=rk_outcome(chunks, stream_exc),
                complete=_completion_outcome(done, complete_exc),
                from_chunks=from_chunks,
            )
    return results


# --- SDK side -------------------------------------------------------------------------------------


def _payload_kind(key: object, number: object = None) -> str | None:
    """The rk error class _ERROR_KINDS / _ERROR_STATUS name for an error payload's type, code
    or numeric code."""
    if isinstance(key, str) and key.lower() in _ERROR_KINDS:
        return _ERROR_KINDS[key.lower()]
    if isinstance(number, int) and not isinstance(number, bool):
        if number in _ERROR_STATUS:
            return _ERROR_STATUS[number]
        if 500 <= number <= 599:
            return "ServerError"
    return None


def _error_payload_kind(body: object) -> str:
    """The category of an error payload an SDK raised with: ``error:<class>`` or, when no
    entry matches, ``error:?<type/code>``."""
    err: object = body
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        err = body["error"]
    if not isinstance(err, Mapping):
        return "error:?"
    code, etype, number = err.get("code"), err.get("type"), err.get("code")
    kind = _payload_kind(code) or _payload_kind(etype) or _payload_kind(None, number)
    if kind is None:
        kind = "?" + "/".join(str(x) for x in (etype, code) if x is not None)
    return f"error:{kind}"


def _sdk_error(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "ok", ""
    detail = _describe(exc)
    if isinstance(exc, openai.APIError | anthropic.APIError):
        return _error_payload_kind(exc.body), detail
    if isinstance(exc, genai_errors.APIError):
        return _error_payload_kind(exc.details), detail
    if isinstance(exc, RuntimeError) and "response.completed" in str(exc):
        return "truncated", detail  # openai Responses: the stream ended without its end event
    return f"exception:{type(exc).__name__}", detail


def _policy(out: Outcome, exc: BaseException | None, blocked: bool = False) -> None:
    """Set ``out.error``: the SDK's exception, else a policy stop it reported as data."""
    out.error, out.error_detail = _sdk_error(exc)
    if exc is None and (blocked or any(c.finish == "content_filter" for c in out.choices.values())):
        out.error = "content_filter"


def _finish(api: str, raw: str | None, called: bool = False) -> str | None:
    if raw is None or raw in ("", "FINISH_REASON_UNSPECIFIED"):
        return None
    finish = _FINISH[api].get(raw, raw.lower())
    return "tool_calls" if finish == "stop" and called else finish


def _usage_openai_chat(usage: openai.types.CompletionUsage | None) -> UsageView | None:
    if usage is None:
        return None
    prompt_details = usage.prompt_tokens_details
    completion_details = usage.completion_tokens_details
    return UsageView(
        usage.prompt_tokens or 0,
        usage.completion_tokens or 0,
        (prompt_details.cached_tokens or 0) if prompt_details else 0,
        0,
        (completion_details.reasoning_tokens or 0) if completion_details else 0,
    )


def _extra_text(model: openai.BaseModel, *names: str) -> str:
    """The first of ``names`` the SDK kept as an untyped extra field (OpenAI-compatible
    servers' ``reasoning_content`` / ``reasoning``), as text."""
    extra = model.model_extra or {}
    for name in names:
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


async def sdk_openai_chat(url: str) -> Outcome:
    """openai: ``chat.completions.create(stream=True)`` accumulated by the SDK's own
    ``ChatCompletionStreamState``. Thinking is the accumulated ``reasoning_content`` (else
    ``reasoning``) extra field, which the SDK keeps but does not type."""
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    state: ChatCompletionStreamState[object] = ChatCompletionStreamState()
    seen = False
    exc: BaseException | None = None
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        async for chunk in stream:
            state.handle_chunk(chunk)
            seen = True
    except Exception as e:
        exc = e
    finally:
        await client.close()
    out = Outcome()
    if seen:
        snapshot = state.current_completion_snapshot
        for raw in snapshot.choices:
            choice = out.choice(raw.index)
            message = raw.message
            choice.text = message.content or ""
            choice.refusal = message.refusal or ""
            choice.thinking = _extra_text(message, "reasoning_content", "reasoning")
            choice.calls = [
                Call(call.id or None, call.function.name or None, call.function.arguments or "")
                for call in message.tool_calls or []
                if call.type == "function"
            ]
            choice.finish = _finish("openai_chat", raw.finish_reason)
        out.usage = _usage_openai_chat(snapshot.usage)
    _policy(out, exc)
    return out


def _responses_outcome(out: Outcome, response: openai.types.responses.Response) -> None:
    choice = out.choice(0)
    for item in response.output:
        if item.type == "message":
            for part in item.content:
                if part.type == "output_text":
                    choice.text += part.text
                elif part.type == "refusal":
                    choice.refusal += part.refusal
        elif item.type == "reasoning":
            choice.thinking += "".join(s.text for s in item.summary)
            choice.thinking += "".join(c.text for c in item.content or [])
            choice.opaque += item.encrypted_content or ""
        elif item.type == "function_call":
            choice.calls.append(Call(item.call_id or item.id or None, item.name, item.arguments))
    if response.status == "completed":
        choice.finish = _finish("openai_responses", "completed", bool(choice.calls))
    elif response.status == "incomplete":
        details = response.incomplete_details
        choice.finish = _finish(
            "openai_responses", (details.reason if details else None) or "incomplete"
        )
    usage = response.usage
    if usage is not None:
        out.usage = UsageView(
            usage.input_tokens,
            usage.output_tokens,
            usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0,
            0,
            usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0,
        )


async def _responses_last_lifecycle(url: str) -> openai.types.responses.Response | None:
    """The response object of the last lifecycle event ``responses.create(stream=True)``
    yields (no accumulation, no identity checks); ``None`` if it raises."""
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    last: openai.types.responses.Response | None = None
    try:
        stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True)
        async for event in stream:
            if (
                event.type == "response.created"
                or event.type == "response.queued"
                or event.type == "response.in_progress"
                or event.type == "response.failed"
                or event.type == "response.incomplete"
                or event.type == "response.completed"
            ):
                last = event.response
    except Exception:
        return None
    finally:
        await client.close()
    return last


async def sdk_openai_responses(url: str) -> Outcome:
    """openai: ``responses.stream(...)`` and its ``get_final_response()`` (the response of
    ``response.completed``); when that fails, the last response object a lifecycle event
    carried (``response.failed`` / ``incomplete`` / ``in_progress``). When the helper's own
    state machine gives up (a ``RuntimeError`` other than the missing ``response.completed``)
    the content and the outcome come from the typed events of
    ``responses.create(stream=True)`` instead, the SDK's plain streaming API, and a note
    records the helper's complaint (e.g. a proxy that rotates response ids between events,
    which the helper refuses although every event is well-formed)."""
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    last: openai.types.responses.Response | None = None
    exc: BaseException | None = None
    try:
        async with client.responses.stream(model=MODEL, input=PROMPT) as stream:
            async for event in stream:
                if (
                    event.type == "response.created"
                    or event.type == "response.queued"
                    or event.type == "response.in_progress"
                    or event.type == "response.failed"
                    or event.type == "response.incomplete"
                    or event.type == "response.completed"
                ):
                    last = event.response
            last = await stream.get_final_response()
    except Exception as e:
        exc = e
    finally:
        await client.close()
    helper_gave_up = exc is not None and not isinstance(exc, openai.APIError)
    notes: list[str] = []
    if helper_gave_up and _sdk_error(exc)[0] != "truncated":
        last = await _responses_last_lifecycle(url)
        if last is not None:  # the plain streaming API read every event without an error
            notes.append(
                f"sdk responses.stream raised ({_describe(exc) if exc else '-'}); "
                "compared with responses.create(stream=True), which reads it without error"
            )
            exc = None
    out = Outcome(notes=notes)
    if last is not None:
        _responses_outcome(out, last)
    _policy(out, exc)
    if exc is None and last is not None and last.status == "failed" and last.error is not None:
        out.error = _error_payload_kind({"code": last.error.code})
        out.error_detail = f"response.failed: {last.error.code}"
    return out


async def sdk_anthropic(url: str) -> Outcome:
    """anthropic: ``messages.stream(...)`` and ``get_final_message()`` (on an error, the SDK's
    snapshot so far). Tool arguments are the ``input_json_delta`` strings the SDK yielded for
    the block, concatenated (the message itself only keeps the parsed ``input``)."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)
    json_bufs: dict[int, str] = {}
    message: anthropic.types.Message | None = None
    exc: BaseException | None = None
    try:
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            try:
                async for event in stream:
                    if (
                        event.type == "content_block_delta"
                        and event.delta.type == "input_json_delta"
                    ):
                        json_bufs[event.index] = (
                            json_bufs.get(event.index, "") + event.delta.partial_json
                        )
                message = await stream.get_final_message()
            finally:
                if message is None:
                    try:
                        message = stream.current_message_snapshot
                    except AssertionError:  # not even message_start arrived
                        message = None
    except Exception as e:
        exc = e
    finally:
        await client.close()
    out = Outcome()
    if message is not None:
        choice = out.choice(0)
        for index, block in enumerate(message.content):
            if block.type == "text":
                choice.text += block.text
            elif block.type == "thinking":
                choice.thinking += block.thinking
                choice.signature += block.signature
            elif block.type == "redacted_thinking":
                choice.opaque += block.data
            elif block.type == "tool_use":
                choice.calls.append(Call(block.id, block.name, json_bufs.get(index, "")))
        choice.finish = _finish("anthropic", message.stop_reason)
        usage = message.usage
        read = usage.cache_read_input_tokens or 0
        write = usage.cache_creation_input_tokens or 0
        details = usage.output_tokens_details
        out.usage = UsageView(
            usage.input_tokens + read + write,
            usage.output_tokens,
            read,
            write,
            (details.thinking_tokens or 0) if details is not None else 0,
        )
    _policy(out, exc)
    return out


async def sdk_gemini(url: str) -> Outcome:
    """google-genai: ``aio.models.generate_content_stream``; the SDK yields one typed
    response per event and has no accumulator, so parts are concatenated per candidate here
    (``thoughtSignature`` bytes re-encoded as base64, ``functionCall.args`` JSON-encoded)."""
    client = genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=url + "/"))
    out = Outcome()
    raw_finish: dict[int, str] = {}
    blocked = False
    exc: BaseException | None = None
    try:
        async for response in await client.aio.models.generate_content_stream(
            model=MODEL, contents=PROMPT
        ):
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason is not None:
                blocked = (
                    feedback.block_reason != genai_types.BlockedReason.BLOCKED_REASON_UNSPECIFIED
                )
            for candidate in response.candidates or []:
                index = candidate.index or 0
                choice = out.choice(index)
                parts = candidate.content.parts if candidate.content is not None else None
                for part in parts or []:
                    if part.text is not None:
                        if part.thought:
                            choice.thinking += part.text
                        else:
                            choice.text += part.text
                    if part.function_call is not None:
                        call = part.function_call
                        args = json.dumps(call.args or {}, ensure_ascii=False)
                        choice.calls.append(Call(call.id or None, call.name or None, args))
                    if part.thought_signature is not None:
                        choice.signature += base64.b64encode(part.thought_signature).decode()
                if candidate.finish_reason is not None:
                    raw_finish[index] = str(candidate.finish_reason.value)
            metadata = response.usage_metadata
            if metadata is not None:
                thoughts = metadata.thoughts_token_count or 0
                out.usage = UsageView(
                    (metadata.prompt_token_count or 0)
                    + (metadata.tool_use_prompt_token_count or 0),
                    (metadata.candidates_token_count or 0) + thoughts,
                    metadata.cached_content_token_count or 0,
                    0,
                    thoughts,
                )
    except Exception as e:
        exc = e
    finally:
        await client.aio.aclose()
    for index, raw in raw_finish.items():
        choice = out.choice(index)
        choice.finish = _finish("gemini", raw, bool(choice.calls))
    _policy(out, exc, blocked)
    return out


async def run_sdks(fixtures: Sequence[Fixture], server: FixtureServer) -> dict[str, Outcome]:
    """Read every fixture through its official SDK (under asyncio)."""
    results: dict[str, Outcome] = {}
    for fixture in fixtures:
        root = server.root(fixture.id)
        try:
            async with asyncio.timeout(TIMEOUT):
                if fixture.api == "openai_chat":
                    results[fixture.id] = await sdk_openai_chat(f"{root}/v1")
                elif fixture.api == "openai_responses":
                    results[fixture.id] = await sdk_openai_responses(f"{root}/v1")
                elif fixture.api == "anthropic":
                    results[fixture.id] = await sdk_anthropic(root)
                else:
                    results[fixture.id] = await sdk_gemini(root)
        except TimeoutError as exc:
            out = Outcome()
            out.error, out.error_detail = "exception:TimeoutError", _describe(exc)
            results[fixture.id] = out
    return results


# --- comparison -----------------------------------------------------------------------------------


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


def _calls_view(calls: Sequence[Call], parsed: bool) -> list[tuple[str | None, str | None, str]]:
    return [(c.id, c.name, _canonical_json(c.arguments) if parsed else c.arguments) for c in calls]


def _fields(out: Outcome, index: int, api: str) -> dict[str, object]:
    choice = out.choices.get(index, Choice())
    return {
        "text": choice.text,
        "thinking": choice.thinking,
        "thinking_signature": choice.signature,
        "thinking_opaque": choice.opaque,
        "refusal": choice.refusal,
        "tool_calls": _calls_view(choice.calls, parsed=api == "gemini"),
        "finish": choice.finish,
    }


def _usage_fields(out: Outcome, other: Outcome) -> dict[str, object]:
    """``usage.<count>`` fields, or a single ``usage`` field when either side has none."""
    if out.usage is None or other.usage is None:
        return {"usage": out.usage}
    return {
        f"usage.{name}": getattr(out.usage, name)
        for name in ("input", "output", "cached", "cache_write", "reasoning")
    }


def _value(out: Outcome, name: str, api: str) -> object:
    """One field of choice 0 (``error``, ``usage`` and ``usage.<count>`` included)."""
    if name == "error":
        return out.error
    if name == "usage":
        return out.usage
    if name.startswith("usage."):
        return getattr(out.usage, name.removeprefix("usage.")) if out.usage else None
    return _fields(out, 0, api)[name]


def _show(a: object, b: object, width: int = 90) -> tuple[str, str]:
    """Both values as short text: a long one as its length and a window of its ``repr``
    starting a little before the first difference."""
    sa, sb = repr(a), repr(b)
    at = next(
        (i for i, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y), min(len(sa), len(sb))
    )
    start = max(0, at - 20)

    def window(text: str) -> str:
        if len(text) <= width:
            return text
        begin = min(start, max(0, len(text) - width))
        end = begin + width
        head = "..." if begin else ""
        tail = "..." if end < len(text) else ""
        return f"<{len(text)} chars>{head}{text[begin:end]}{tail}"

    return window(sa), window(sb)


def compare(fixture: Fixture, rk_result: RkResult, sdk: Outcome) -> list[str]:
    """The difference lines for one fixture: ``FIXTURE field: rk=... sdk=...``."""
    lines: list[str] = []

    def emit(name: str, rk_value: object, sdk_value: object, prefix: str = "") -> None:
        a, b = _show(rk_value, sdk_value)
        lines.append(f"{fixture.id} {prefix}{name}: rk={a} sdk={b}")

    stream = rk_result.stream
    indices = sorted(set(stream.choices) | set(sdk.choices)) or [0]
    many = len(indices) > 1 or indices != [0]
    for index in indices:
        rk_fields = _fields(stream, index, fixture.api)
        sdk_fields = _fields(sdk, index, fixture.api)
        for name, rk_value in rk_fields.items():
            if rk_value != sdk_fields[name]:
                emit(f"{name}[{index}]" if many else name, rk_value, sdk_fields[name])
    rk_usage, sdk_usage = _usage_fields(stream, sdk), _usage_fields(sdk, stream)
    for name, rk_value in rk_usage.items():
        if rk_value != sdk_usage[name]:
            emit(name, rk_value, sdk_usage[name])
    if stream.error != sdk.error:
        a, b = _show(stream.error, sdk.error)
        lines.append(
            f"{fixture.id} error: rk={a} sdk={b}"
            f"  [rk: {stream.error_detail or '-'} | sdk: {sdk.error_detail or '-'}]"
        )

    # complete() and from_chunks(): reported only where they add something, i.e. differ from
    # the SDK and from the stream's own reading (choice 0; a complete() that raised has only
    # its error to compare).
    for label, other in (
        ("complete.", rk_result.complete),
        ("from_chunks.", rk_result.from_chunks),
    ):
        if other is None:
            continue
        names = ["error"]
        if other.returned:
            names += [
                "text",
                "thinking",
                "thinking_signature",
                "thinking_opaque",
                "refusal",
                "tool_calls",
                "finish",
                *_usage_fields(other, sdk),
            ]
        for name in names:
            value, sdk_value, stream_value = (
                _value(o, name, fixture.api) for o in (other, sdk, stream)
            )
            if value != sdk_value and value != stream_value:
                emit(name, value, sdk_value, prefix=label)
    return lines


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the differences and the summary; 1 if any fixture differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=None, help="folder with manifest.json")
    parser.add_argument("names", nargs="*", metavar="NAME", help="fixture ids (default: all)")
    args = parser.parse_args(argv)
    directory: Path = args.dir if args.dir is not None else REPO_ROOT / DEFAULT_DIR
    try:
        fixtures = load_fixtures(directory, args.names)
    except (OSError, ValueError, KeyError, ManifestError) as exc:
        print(f"recordings: {exc}", file=sys.stderr)
        return 2
    with FixtureServer(fixtures) as server:
        rk_results = trio.run(run_rk, fixtures, server)
        for fixture in fixtures:  # stream + complete, retries off: exactly two requests
            if server.requests.get(fixture.id, 0) != 2:
                count = server.requests.get(fixture.id, 0)
                print(f"recordings: {fixture.id}: rk sent {count} requests, not 2", file=sys.stderr)
        sdk_results = asyncio.run(run_sdks(fixtures, server))
    matched = 0
    for fixture in fixtures:
        lines = compare(fixture, rk_results[fixture.id], sdk_results[fixture.id])
        for line in lines:
            print(line)
        for note in sdk_results[fixture.id].notes:
            print(f"{fixture.id} note: {note}")
        matched += not lines
    print(f"{matched}/{len(fixtures)} match")
    return 0 if matched == len(fixtures) else 1


if __name__ == "__main__":
    sys.exit(main())
