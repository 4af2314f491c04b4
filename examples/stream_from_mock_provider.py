"""Stream completions through the full pipeline from the loopback mock provider.

Run: ``uv run python examples/stream_from_mock_provider.py``

Starts the mock provider on 127.0.0.1 (a real HTTP server), configures an OpenAI-shaped and an
Anthropic-shaped endpoint against it, streams a reply token by token, then rides out a short
scripted 503 storm with retries and shows the breaker's view of it.
"""

from __future__ import annotations

import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

KEY = "sk-mock-example-0123456789"


def config(mock: MockProvider) -> rk.SupervisorConfig:
    retry = rk.RetryPolicy(max_retries=3, initial_backoff=0.05, max_backoff=0.5)
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name=provider,
                provider=provider,
                base_url=mock.base_url_for(provider),
                model="mock-model",
                credential=rk.StaticCredential(KEY),
                retry=retry,
            )
            for provider in ("openai", "anthropic")
        ]
    )


async def main() -> dict[str, str]:
    """Return what each endpoint answered."""
    mock = MockProvider(api_key=KEY, reply="Structured concurrency keeps every call accounted for.")
    answers: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, mock)
        async with rk.open_supervisor(config(mock)) as sup:
            request = rk.ChatRequest(messages=[{"role": "user", "content": "Why Trio?"}])
            for name in ("openai", "anthropic"):
                print(f"{name}: ", end="")
                async with sup.endpoint(name).stream(request) as chunks:
                    parts = []
                    async for chunk in chunks:
                        print(chunk.text, end="", flush=True)
                        parts.append(chunk.text)
                answers[name] = "".join(parts)
                print(f"\n  usage: {chunks.usage}")

            mock.add_fault("openai", Fault.status(503), times=2)
            reply = await sup.endpoint("openai").complete(request)
            stats = sup.breaker("openai").statistics()
            print(
                f"after a 2-request 503 storm: answered in {reply.attempts} attempts; "
                f"breaker {stats.state} with {stats.failures} failures recorded"
            )
            answers["retried"] = reply.text
        nursery.cancel_scope.cancel()
    return answers


if __name__ == "__main__":
    trio.run(main)
