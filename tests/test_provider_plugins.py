"""The provider plug-in interface: a provider is one object, registered by name.

A toy provider with its own URL, auth header, error bodies, rate-limit header and event format
streams through the real pipeline from a loopback HTTP server, with no change anywhere else;
and no module outside ``_providers/`` decides anything by a provider's name.
"""

from __future__ import annotations

import ast
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import MockServer, MockServerLimits
from rakka_trio.testing._server import HttpRequest, ResponseWriter, serve_http

pytestmark = pytest.mark.trio

PACKAGE = Path(rk.__file__).parent
TOKEN = "toy-secret-3f2e1d0c9b8a"
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi there"}])


# --- a provider nobody built in ----------------------------------------------------------------


class ToyAdapter(rk.StreamAdapter):
    """``event: piece`` ``{"t": text}`` ... ``event: end`` ``{"in", "out"}``; ``event: oops``
    is an error object the provider classifies."""

    def __init__(self, provider: ToyProvider, endpoint: str | None) -> None:
        super().__init__(provider=provider.name, endpoint=endpoint)
        self._owner = provider

    def feed(self, event: rk.SSEEvent) -> list[rk.StreamChunk]:
        body = json.loads(event.data)
        if event.event == "piece":
            return [rk.StreamChunk(text=body["t"], raw_event=event)]
        if event.event == "oops":
            raise self._owner.classify_stream_error(body, endpoint=self.endpoint)
        if event.event == "end":
            self.done = True
            self.finish_reason = "stop"
            self.usage = rk.Usage(body["in"], body["out"])
            return [rk.StreamChunk(finish_reason="stop", usage=self.usage, raw_event=event)]
        return []


class ToyProvider(rk.Provider):
    """``POST {base}/generate/{model}?mode=stream`` with ``x-toy-token``."""

    option_names = frozenset({"mode"})

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.hint_calls = 0

    def build_request(
        self, request: rk.ChatRequest, *, base_url: str, model: str, options: Mapping[str, str]
    ) -> rk.HttpCall:
        prompt = " ".join(str(m["content"]) for m in request.messages)
        return rk.HttpCall(
            url=f"{base_url.rstrip('/')}/generate/{model}",
            json={"prompt": prompt, "limit": request.max_tokens},
            params={"mode": options.get("mode", "stream")},
            headers={"x-toy-request": "1"},
        )

    def auth_headers(
        self, secret: rk.Secret | None, *, options: Mapping[str, str]
    ) -> dict[str, str]:
        return {} if secret is None else {"x-toy-token": secret.get_secret_value()}

    def classify_http_error(
        self,
        status: int,
        headers: Mapping[str, str] | None,
        body: Any,
        *,
        endpoint: str | None = None,
    ) -> rk.ProviderError:
        problem = json.loads(body)["problem"]
        if problem == "busy":
            return rk.Overloaded(
                "toy is busy", provider=self.name, endpoint=endpoint, status=status
            )
        return rk.BadRequest(problem, provider=self.name, endpoint=endpoint, status=status)

    def classify_stream_error(
        self, payload: Any, *, endpoint: str | None = None
    ) -> rk.ProviderError:
        return rk.RateLimited(payload["why"], provider=self.name, endpoint=endpoint)

    def rate_limit_hints(
        self, headers: Mapping[str, str], *, wall: float | None = None
    ) -> dict[str, rk.RateLimitHint]:
        self.hint_calls += 1
        left = {k.lower(): v for k, v in headers.items()}.get("x-toy-left")
        return {} if left is None else {"requests": rk.RateLimitHint(None, int(left), None)}

    def stream_adapter(self, *, endpoint: str | None = None) -> rk.StreamAdapter:
        return ToyAdapter(self, endpoint)


@pytest.fixture
def toy() -> Iterator[ToyProvider]:
    provider = rk.register_provider(ToyProvider("toy-llm"))
    assert isinstance(provider, ToyProvider)
    try:
        yield provider
    finally:
        from rakka_trio._providers import unregister_provider

        unregister_provider("toy-llm")


class ToyServer:
    """What the toy provider's server does, scripted per test."""

    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []
        self.script: list[str] = []  # "ok", "busy", "oops"

    async def handle(self, request: HttpRequest, writer: ResponseWriter) -> None:
        self.seen.append(request)
        if request.header("x-toy-token") != TOKEN:
            await writer.send_json(401, [], {"problem": "who are you"})
            return
        step = self.script.pop(0) if self.script else "ok"
        if step == "busy":
            await writer.send_json(503, [], {"problem": "busy"})
            return
        await writer.start(200, [("content-type", "text/event-stream"), ("x-toy-left", "2")])
        for piece in ("Hel", "lo ", "toy"):
            await writer.write(f"event: piece\ndata: {json.dumps({'t': piece})}\n\n".encode())
        if step == "oops":
            await writer.write(b'event: oops\ndata: {"why": "slow down"}\n\n')
        else:
            await writer.write(b'event: end\ndata: {"in": 2, "out": 3}\n\n')
        await writer.end()


@pytest.fixture
async def server() -> AsyncIterator[tuple[ToyServer, MockServer]]:
    toy_server = ToyServer()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_http(
                toy_server.handle,
                "127.0.0.1",
                0,
                limits=MockServerLimits(),
                task_status=task_status,
            )
        )
        yield toy_server, bound
        nursery.cancel_scope.cancel()


def toy_config(url: str, **kw: Any) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="toy",
                provider="toy-llm",
                base_url=url,
                model="tiny-1",
                credential=rk.StaticCredential(TOKEN),
                retry=rk.RetryPolicy(max_retries=1, initial_backoff=0.01, max_backoff=0.02),
                limits=rk.RateLimits(requests_per_minute=600),
                **kw,
            )
        ]
    )


async def test_a_registered_provider_streams_through_the_pipeline(
    toy: ToyProvider, server: tuple[ToyServer, MockServer]
) -> None:
    toy_server, bound = server
    assert "toy-llm" in rk.provider_names()
    with trio.fail_after(10):
        async with rk.open_supervisor(toy_config(bound.url)) as sup:
            ep = sup.endpoint("toy")
            async with ep.stream(HI) as stream:
                chunks = [chunk async for chunk in stream]
            done = await ep.complete(HI)
            limits = sup.limiter("toy").statistics().keys[0].limits
    assert "".join(c.text for c in chunks) == "Hello toy"
    assert chunks[-1].usage == rk.Usage(2, 3)
    assert (done.text, done.finish_reason, done.usage) == ("Hello toy", "stop", rk.Usage(2, 3))
    request = toy_server.seen[0]
    assert request.path == "/generate/tiny-1" and request.query == "mode=stream"
    assert request.header("x-toy-request") == "1"
    assert request.header("authorization") is None  # the toy's own auth header only
    assert json.loads(request.body) == {"prompt": "hi there", "limit": None}
    # the toy's rate-limit header reached the limiter: the bucket was clamped to what is left
    assert toy.hint_calls >= 2
    [requests] = limits
    assert requests.available <= 2


async def test_the_providers_own_error_classification_applies(
    toy: ToyProvider, server: tuple[ToyServer, MockServer]
) -> None:
    toy_server, bound = server
    toy_server.script = ["busy", "ok", "oops", "busy", "busy"]
    with trio.fail_after(10):
        async with rk.open_supervisor(toy_config(bound.url)) as sup:
            ep = sup.endpoint("toy")
            done = await ep.complete(HI)  # a busy 503 (Overloaded: retried), then ok
            assert done.attempts == 2
            seen: list[str] = []
            with pytest.raises(rk.RateLimited, match="slow down"):
                async with ep.stream(HI) as stream:
                    async for chunk in stream:
                        seen.append(chunk.text)
            with pytest.raises(rk.Overloaded) as info:
                await ep.complete(HI)
    assert "".join(seen) == "Hello toy"  # the error came after the text
    assert (info.value.provider, info.value.endpoint, info.value.status) == ("toy-llm", "toy", 503)
    # the public classifier uses the registered provider's rules too
    direct = rk.classify_http_status(503, {}, b'{"problem": "busy"}', provider="toy-llm")
    assert isinstance(direct, rk.Overloaded)


async def test_options_and_names_are_validated(toy: ToyProvider) -> None:
    with pytest.raises(ValueError, match="already registered"):
        rk.register_provider(ToyProvider("toy-llm"))
    with pytest.raises(ValueError, match="provider names"):
        ToyProvider("Toy LLM")
    ok = rk.EndpointConfig(
        name="t", provider="toy-llm", base_url="http://x", provider_options={"mode": "batch"}
    )
    assert ok.provider_options == {"mode": "batch"}
    with pytest.raises(rk.ConfigError, match=r"provider_options\.speed: unknown option"):
        rk.EndpointConfig(
            name="t", provider="toy-llm", base_url="http://x", provider_options={"speed": "x"}
        )
    with pytest.raises(rk.ConfigError, match="provider: must be one of"):
        rk.EndpointConfig(name="t", provider="toy-llm-2", base_url="http://x")


# --- no provider-name switches outside _providers/ ----------------------------------------------

# Where naming providers is the point: the providers themselves, the mock provider that imitates
# them, and the demo that configures endpoints.
_ALLOWED = ("_providers", "testing", "_demo.py")


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def provider_name_literals(root: Path, names: frozenset[str]) -> list[str]:
    """``path:line: 'name'`` for every string literal equal to a provider name (docstrings
    aside) in the package outside the allowed places."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in _ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in names
                and id(node) not in skip
            ):
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    return found


async def test_no_provider_name_switch_outside_providers() -> None:
    names = frozenset(rk.provider_names())
    assert provider_name_literals(PACKAGE, names) == []


async def test_the_switch_detector_finds_a_switch(tmp_path: Path) -> None:
    # The detector itself must be able to fail: a switch like the ones that used to be spread
    # over the request, session, error and limiter modules.
    (tmp_path / "_request.py").write_text(
        '"""Mentions "anthropic" in a docstring, which is fine."""\n'
        "def url(provider):\n"
        '    if provider in ("openai", "openai-compatible"):\n'
        '        return "/chat/completions"\n'
        '    return "/v1/messages" if provider == "anthropic" else ""\n'
    )
    found = provider_name_literals(tmp_path, frozenset(rk.provider_names()))
    assert found == [
        "_request.py:3: 'openai'",
        "_request.py:3: 'openai-compatible'",
        "_request.py:5: 'anthropic'",
    ]
