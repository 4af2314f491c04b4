"""Provider-neutral requests and results, and their translation to each provider's HTTP call.

:class:`ChatRequest` uses the OpenAI chat message shape (``{"role", "content"}``, function
tools) because every provider can be fed from it; :func:`build_http_request` turns it into the
path and JSON body of the endpoint's provider. ``extra`` is merged into the body last, so any
provider-specific field can be set (or overridden) without waiting for a new release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._chunks import StreamChunk, ToolCallDelta, Usage
from ._errors import ConfigError
from ._providers import prepare_openai_stream_body

__all__ = ["ChatRequest", "Completion", "HttpCall", "ToolCall", "build_http_request"]

_DEFAULT_ANTHROPIC_MAX_TOKENS = 1024  # Anthropic requires max_tokens; other providers don't


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ConfigError([("messages", "must be a non-empty list of {role, content} objects")])
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ConfigError([(f"messages[{i}]", "must be an object with a string 'role'")])
        out.append(dict(message))
    return out


def _optional_positive_int(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError([(attribute.name, f"must be a positive integer, got {value!r}")])


@attrs.frozen(kw_only=True)
class ChatRequest:
    """One chat completion request, in the OpenAI message shape.

    ``messages``: ``[{"role": "system"|"user"|"assistant"|"tool", "content": ...}]``.
    ``tools``: OpenAI function tools (``{"type": "function", "function": {...}}``), translated
    for Anthropic and Gemini. ``model`` defaults to the endpoint's ``model``. ``extra`` is
    merged into the provider's JSON body last. ``idempotent=False`` forbids retries (for
    requests with side effects, e.g. a stored Responses API conversation).
    """

    model: str | None = None
    messages: list[dict[str, Any]] = attrs.field(converter=_messages)
    max_tokens: int | None = attrs.field(default=None, validator=_optional_positive_int)
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    idempotent: bool = True


@attrs.frozen(kw_only=True)
class ToolCall:
    """A complete tool call assembled from its deltas; ``arguments`` is the JSON text."""

    id: str | None
    name: str | None
    arguments: str

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded from JSON (raises ``ValueError`` if the model produced bad
        JSON)."""
        return json.loads(self.arguments or "{}")


@attrs.frozen(kw_only=True)
class Completion:
    """The whole result of :meth:`Endpoint.complete`.

    ``endpoint`` is the endpoint that produced it and ``attempts`` how many tries it took.
    """

    text: str
    thinking: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage | None
    endpoint: str
    attempts: int

    @classmethod
    def from_chunks(
        cls, chunks: Sequence[StreamChunk], *, endpoint: str, attempts: int
    ) -> Completion:
        """Assemble a completion from a stream's chunks (choice 0)."""
        text: list[str] = []
        thinking: list[str] = []
        calls: dict[int, list[ToolCallDelta]] = {}
        finish: str | None = None
        usage: Usage | None = None
        for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.index != 0:
                continue
            text.append(chunk.text)
            thinking.append(chunk.thinking)
            for delta in chunk.tool_calls:
                calls.setdefault(delta.index, []).append(delta)
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
        tool_calls = tuple(
            ToolCall(
                id=next((d.id for d in deltas if d.id), None),
                name=next((d.name for d in deltas if d.name), None),
                arguments="".join(d.arguments_delta for d in deltas),
            )
            for _, deltas in sorted(calls.items())
        )
        return cls(
            text="".join(text),
            thinking="".join(thinking),
            tool_calls=tool_calls,
            finish_reason=finish,
            usage=usage,
            endpoint=endpoint,
            attempts=attempts,
        )


@attrs.frozen(kw_only=True)
class HttpCall:
    """The provider HTTP call for a request: ``POST url`` with ``json`` (and query ``params``)."""

    url: str
    json: dict[str, Any]
    params: dict[str, str] = attrs.field(factory=dict)


def _join(base: str, *, versioned: str, path: str) -> str:
    """``base`` + ``path``, inserting the API version segment if ``base`` lacks it."""
    base = base.rstrip("/")
    if not base.rsplit("/", 1)[-1].startswith("v1"):
        base = f"{base}/{versioned}"
    return f"{base}{path}"


def _split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    system = [m for m in messages if m["role"] in ("system", "developer")]
    rest = [m for m in messages if m["role"] not in ("system", "developer")]
    text = "\n\n".join(str(m.get("content", "")) for m in system) if system else None
    return text, rest


def _function_specs(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    specs = []
    for tool in tools or []:
        fn = tool.get("function", tool)
        specs.append(
            {
                "name": fn.get("name"),
                "description": fn.get("description", ""),
                "parameters": fn.get("parameters", {"type": "object", "properties": {}}),
            }
        )
    return specs


def build_http_request(provider: str, base_url: str, model: str, request: ChatRequest) -> HttpCall:
    """The streaming HTTP call that performs ``request`` against ``provider`` at ``base_url``."""
    body: dict[str, Any]
    params: dict[str, str] = {}
    if provider in ("openai", "openai-compatible"):
        url = f"{base_url.rstrip('/')}/chat/completions"
        body = {"model": model, "messages": request.messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = request.tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.stop:
            body["stop"] = request.stop
    elif provider == "openai-responses":
        url = f"{base_url.rstrip('/')}/responses"
        system, rest = _split_system(request.messages)
        body = {"model": model, "input": rest, "stream": True}
        if system:
            body["instructions"] = system
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = [
                {"type": "function", **spec} for spec in _function_specs(request.tools)
            ]
    elif provider == "anthropic":
        url = _join(base_url, versioned="v1", path="/messages")
        system, rest = _split_system(request.messages)
        body = {
            "model": model,
            "messages": rest,
            "max_tokens": request.max_tokens or _DEFAULT_ANTHROPIC_MAX_TOKENS,
            "stream": True,
        }
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [
                {
                    "name": s["name"],
                    "description": s["description"],
                    "input_schema": s["parameters"],
                }
                for s in _function_specs(request.tools)
            ]
        if request.stop:
            body["stop_sequences"] = request.stop
    elif provider == "gemini":
        url = _join(base_url, versioned="v1beta", path=f"/models/{model}:streamGenerateContent")
        params = {"alt": "sse"}
        system, rest = _split_system(request.messages)
        body = {
            "contents": [
                {
                    "role": "model" if m["role"] == "assistant" else "user",
                    "parts": [{"text": str(m.get("content", ""))}],
                }
                for m in rest
            ]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = request.stop
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": _function_specs(request.tools)}]
    else:
        raise ConfigError([("provider", f"unsupported provider {provider!r}")])
    if provider != "gemini":
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
    body.update(request.extra)
    if provider in ("openai", "openai-compatible"):
        # After the extras: streaming with usage is what the limiter and breaker rely on.
        body = prepare_openai_stream_body(body)
    return HttpCall(url=url, json=body, params=params)
