"""Call the real OpenAI and Anthropic APIs through rakka-trio, when their keys are set.

Run: ``OPENAI_API_KEY=... ANTHROPIC_API_KEY=... uv run python examples/real_providers.py``

Endpoints whose key is missing are skipped (this example is not run in CI: it needs network
access and spends a few tokens). Models can be overridden with ``OPENAI_MODEL`` and
``ANTHROPIC_MODEL``.
"""

from __future__ import annotations

import os

import trio

import rakka_trio as rk


def configured_endpoints() -> list[rk.EndpointConfig]:
    """The endpoints whose API key is present in the environment."""
    endpoints = []
    if os.environ.get("OPENAI_API_KEY"):
        endpoints.append(
            rk.EndpointConfig(
                name="openai",
                provider="openai",
                base_url="https://api.openai.com/v1",
                model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
                credential=rk.EnvCredential("OPENAI_API_KEY"),
            )
        )
    if os.environ.get("ANTHROPIC_API_KEY"):
        endpoints.append(
            rk.EndpointConfig(
                name="anthropic",
                provider="anthropic",
                base_url="https://api.anthropic.com",
                model=os.environ.get("ANTHROPIC_MODEL", "claude-3-5-haiku-latest"),
                credential=rk.EnvCredential("ANTHROPIC_API_KEY"),
            )
        )
    return endpoints


async def main() -> None:
    endpoints = configured_endpoints()
    if not endpoints:
        print("Set OPENAI_API_KEY and/or ANTHROPIC_API_KEY to run this example.")
        return
    request = rk.ChatRequest(
        messages=[{"role": "user", "content": "In one sentence: what is a circuit breaker?"}],
        max_tokens=80,
    )
    async with rk.open_supervisor(rk.SupervisorConfig(endpoints=endpoints)) as sup:
        for ep in endpoints:
            print(f"--- {ep.name} ({ep.model})")
            try:
                async with sup.endpoint(ep.name).stream(request) as chunks:
                    async for chunk in chunks:
                        print(chunk.text, end="", flush=True)
                print(f"\nusage: {chunks.usage}; finish: {chunks.finish_reason}")
            except rk.RakkaError as exc:  # typed, with the key redacted
                print(f"\nfailed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    trio.run(main)
