"""Providers end to end over real loopback sockets: Azure OpenAI, the OpenAI-compatible
profile, and the behaviours replaying recorded provider traffic called for.

Real sockets need the real clock, so every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import attrs
import pytest
import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

pytestmark = pytest.mark.trio

KEY = "sk-mock-7d1e2f3a4b5c6d7e8f90"
REPLY = "Hello from the mock provider, streamed in pieces."
THINKING = "Let me think about how best to answer this question."
HI = rk.ChatRequest(messages=[{"role": "user", "content": "hi"}])
ALL_PROVIDERS = [
    "openai",
    "openai-responses",
    "anthropic",
    "gemini",
    "azure-openai",
    "openai-compatible",
]


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    provider = MockProvider(api_key=KEY, reply=REPLY, chunks=6, thinking=THINKING)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, provider)
        yield provider
        nursery.cancel_scope.cancel()


def endpoint(
    mock: MockProvider,
    provider: str,
    *,
    model: str = "mock-model",
    options: Mapping[str, str] | None = None,
    retries: int = 0,
    name: str | None = None,
) -> rk.EndpointConfig:
    return rk.EndpointConfig(
        name=name or provider,
        provider=provider,
        base_url=mock.base_url_for(provider),  # type: ignore[arg-type]
        model=model,
        credential=rk.StaticCredential(KEY),
        retry=rk.RetryPolicy(max_retries=retries, initial_backoff=0.01, max_backoff=0.02),
        provider_options=options or {},
    )


def supervisor(*endpoints: rk.EndpointConfig) -> rk.SupervisorConfig:
    return rk.SupervisorConfig(endpoints=list(endpoints))


async def collect(ep: rk.Endpoint, request: rk.ChatRequest = HI) -> list[rk.StreamChunk]:
    async with ep.stream(request) as stream:
        return [chunk async for chunk in stream]


# --- Azure OpenAI ------------------------------------------------------------------------------


async def test_azure_deployment_url_api_version_and_api_key(mock: MockProvider) -> None:
    options = {"api_version": "2025-01-01-preview"}
    cfg = endpoint(mock, "azure-openai", model="gpt-4o-prod", options=options)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            chunks = await collect(sup.endpoint("azure-openai"))
    assert "".join(c.text for c in chunks) == REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens > 0
    rec = mock.requests[-1]
    assert rec.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert rec.query == {"api-version": "2025-01-01-preview"}
    assert "api-key" in rec.header_names and "authorization" not in rec.header_names
    assert (rec.status, rec.outcome, rec.key_matched) == (200, "ok", True)


async def test_azure_deployment_option_and_entra_bearer_auth(mock: MockProvider) -> None:
    options = {"deployment": "chat-prod", "auth": "bearer"}
    cfg = endpoint(mock, "azure-openai", model="gpt-4o", options=options)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            done = await sup.endpoint("azure-openai").complete(HI)
    assert done.text == REPLY
    rec = mock.requests[-1]
    assert rec.path == "/openai/deployments/chat-prod/chat/completions"
    assert rec.query == {"api-version": "2024-10-21"}  # the default version
    assert "authorization" in rec.header_names and "api-key" not in rec.header_names
    assert isinstance(rec.json, dict) and rec.json["model"] == "gpt-4o"


async def test_azure_output_filter_is_content_filtered_naming_the_category(
    mock: MockProvider,
) -> None:
    mock.add_fault("azure-openai", Fault.content_filter(after_chunks=2), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "azure-openai"))) as sup:
            ep = sup.endpoint("azure-openai")
            seen: list[str] = []
            with pytest.raises(rk.ContentFiltered) as info:
                async with ep.stream(HI) as stream:
                    async for chunk in stream:
                        seen.append(chunk.text)
            stats = ep.breaker.statistics()
    assert "".join(seen) and "".join(seen) != REPLY  # two pieces, then the filter
    assert info.value.reason == "violence"
    assert info.value.provider == "azure-openai"
    assert stats.failures == 0  # a policy stop is not the endpoint's fault


async def test_azure_prompt_filter_error_is_content_filtered_and_not_retried(
    mock: MockProvider,
) -> None:
    mock.add_fault("azure-openai", Fault.content_filter(stage="prompt"), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "azure-openai", retries=3))) as sup:
            with pytest.raises(rk.ContentFiltered) as info:
                await sup.endpoint("azure-openai").complete(HI)
    assert info.value.status == 400
    assert info.value.reason == "hate"  # from innererror.content_filter_result
    assert len(mock.requests) == 1


async def test_azure_wrong_key_is_unauthorized(mock: MockProvider) -> None:
    cfg = attrs.evolve(endpoint(mock, "azure-openai"), credential=rk.StaticCredential("nope"))
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(cfg)) as sup:
            with pytest.raises(rk.Unauthorized):
                await sup.endpoint("azure-openai").complete(HI)
    assert [r.status for r in mock.requests] == [401, 401]  # one rotation, one retry


async def test_provider_options_are_checked_by_the_provider() -> None:
    def make(provider: str, options: dict[str, str]) -> rk.EndpointConfig:
        return rk.EndpointConfig(
            name="e", provider=provider, base_url="http://x", provider_options=options
        )

    with pytest.raises(rk.ConfigError, match=r"provider_options\.region: unknown option"):
        make("azure-openai", {"region": "eu"})
    with pytest.raises(rk.ConfigError, match=r"provider_options\.auth: must be one of"):
        make("azure-openai", {"auth": "basic"})
    with pytest.raises(rk.ConfigError, match=r"provider_options\.deployment: unknown option"):
        make("openai", {"deployment": "x"})  # OpenAI takes no options
    cfg = rk.SupervisorConfig.from_dict(
        {
            "endpoints": [
                {
                    "name": "az",
                    "provider": "azure-openai",
                    "base_url": "https://r.openai.azure.com",
                    "provider_options": {"deployment": "d", "api_version": "2024-10-21"},
                }
            ]
        }
    )
    assert cfg.endpoints[0].provider_options == {"deployment": "d", "api_version": "2024-10-21"}
    with pytest.raises(rk.ConfigError, match=r"endpoints\[0\]\.provider_options\.x"):
        rk.SupervisorConfig.from_dict(
            {
                "endpoints": [
                    {
                        "name": "az",
                        "provider": "azure-openai",
                        "base_url": "https://r.openai.azure.com",
                        "provider_options": {"x": "1"},
                    }
                ]
            }
        )


# --- the OpenAI-compatible profile ----------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_compatible_server_reasoning_fields_become_thinking(field: str) -> None:
    mock = MockProvider(api_key=KEY, reply=REPLY, chunks=4, compat_reasoning_field=field)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mock_provider, mock)
            async with rk.open_supervisor(supervisor(endpoint(mock, "openai-compatible"))) as sup:
                ep = sup.endpoint("openai-compatible")
                chunks = await collect(ep)
                done = await ep.complete(HI)
            nursery.cancel_scope.cancel()
    assert "".join(c.thinking for c in chunks) == THINKING
    assert "".join(c.text for c in chunks) == REPLY
    # thinking streams first, and counts as reasoning output
    assert chunks[0].thinking and not chunks[0].text
    usage = chunks[-1].usage
    assert usage is not None and usage.reasoning_tokens == len(THINKING.split())
    assert (done.thinking, done.text) == (THINKING, REPLY)


async def test_compatible_stream_without_done_completes_only_with_the_profile() -> None:
    mock = MockProvider(api_key=KEY, reply=REPLY, chunks=4, compat_sends_done=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mock_provider, mock)
            compat = endpoint(mock, "openai-compatible")
            # the same server read by the strict OpenAI provider
            strict = attrs.evolve(compat, name="strict", provider="openai")
            async with rk.open_supervisor(supervisor(compat, strict)) as sup:
                done = await sup.endpoint("openai-compatible").complete(HI)
                with pytest.raises(rk.StreamTruncated):
                    await sup.endpoint("strict").complete(HI)
            nursery.cancel_scope.cancel()
    assert done.text == REPLY and done.finish_reason == "stop"


async def test_compatible_server_error_bodies_are_classified(mock: MockProvider) -> None:
    mock.add_fault("openai-compatible", Fault.status(400, message="bad sampling"), times=1)
    mock.add_fault("openai-compatible", Fault.status(503), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "openai-compatible"))) as sup:
            ep = sup.endpoint("openai-compatible")
            with pytest.raises(rk.BadRequest, match="bad sampling"):
                await ep.complete(HI)
            with pytest.raises(rk.ServerError) as info:
                await ep.complete(HI)
    assert info.value.status == 503
    body = mock.requests[0]
    assert body.status == 400


def _without_ids(done: rk.Completion) -> rk.Completion:
    calls = tuple(attrs.evolve(c, id="<id>" if c.id else None) for c in done.tool_calls)
    signature = "<signature>" if done.thinking_signature else ""
    return attrs.evolve(done, tool_calls=calls, thinking_signature=signature)


# --- behaviours found by replaying recorded traffic --------------------------------------------


async def test_gemini_blocked_prompt_delivers_its_usage_before_content_filtered(
    mock: MockProvider,
) -> None:
    mock.add_fault("gemini", Fault.content_filter(stage="prompt"), times=2)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "gemini", retries=2))) as sup:
            ep = sup.endpoint("gemini")
            seen: list[rk.StreamChunk] = []
            with pytest.raises(rk.ContentFiltered) as info:
                async with ep.stream(HI) as stream:
                    async for chunk in stream:
                        seen.append(chunk)
            with pytest.raises(rk.ContentFiltered):
                await ep.complete(HI)
            stats = ep.breaker.statistics()
    assert info.value.reason == "SAFETY"
    [usage_chunk] = seen
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.input_tokens > 0 and usage_chunk.usage.output_tokens == 0
    assert len(mock.requests) == 2  # a policy stop is never retried
    assert stats.failures == 0


async def test_responses_incomplete_is_a_length_stop_end_to_end(mock: MockProvider) -> None:
    short = attrs.evolve(HI, max_tokens=3)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "openai-responses"))) as sup:
            ep = sup.endpoint("openai-responses")
            chunks = await collect(ep, short)
            done = await ep.complete(short)
    assert "".join(c.text for c in chunks) == "Hello from the"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert [c.raw_finish_reason for c in chunks if c.raw_finish_reason] == ["max_output_tokens"]
    assert (done.text, done.finish_reason) == ("Hello from the", "length")


async def test_responses_incomplete_content_filter_raises_after_the_text(
    mock: MockProvider,
) -> None:
    mock.add_fault("openai-responses", Fault.content_filter(after_chunks=1), times=1)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, "openai-responses"))) as sup:
            seen: list[rk.StreamChunk] = []
            with pytest.raises(rk.ContentFiltered) as info:
                async with sup.endpoint("openai-responses").stream(HI) as stream:
                    async for chunk in stream:
                        seen.append(chunk)
    assert info.value.reason == "content_filter"
    assert "".join(c.text for c in seen) == "Hello from"
    assert seen[-1].finish_reason == "content_filter" and seen[-1].usage is not None


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
@pytest.mark.parametrize("tools", [False, True])
async def test_complete_agrees_with_the_chunk_stream(
    mock: MockProvider, provider: str, tools: bool
) -> None:
    extra: dict[str, object] = {}
    if provider == "anthropic":
        extra = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    elif provider == "gemini":
        extra = {"generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    spec = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    request = attrs.evolve(HI, extra=extra, tools=[spec] if tools else None)
    with trio.fail_after(10):
        async with rk.open_supervisor(supervisor(endpoint(mock, provider))) as sup:
            ep = sup.endpoint(provider)
            chunks = await collect(ep, request)
            done = await ep.complete(request)
    assembled = rk.Completion.from_chunks(chunks, endpoint=provider, attempts=1)
    # Two requests: the same reply, with fresh ids and signatures each time.
    assert _without_ids(done) == _without_ids(assembled)
    if tools:
        [call] = done.tool_calls
        assert call.name == "lookup" and call.parsed_arguments() == {"text": REPLY}
        assert done.finish_reason == "tool_calls"
    else:
        assert done.text == REPLY and done.finish_reason == "stop"
    if provider in ("anthropic", "gemini", "openai-compatible"):
        assert done.thinking == THINKING
    if provider == "anthropic":
        assert done.thinking_signature  # the thinking block's signature, to send it back
