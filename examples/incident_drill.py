"""Rehearse an incident with the command line: force a healthy endpoint open, watch traffic fail
over, then reset it.

Run: ``uv run python examples/incident_drill.py``

Starts the loopback mock provider, a supervisor with a ``chat`` deployment
(``primary`` -> ``backup``), its control server and a few request loops. Then it does what an
operator would do from a shell, by running the real ``rakka-trio`` commands:

1. ``rakka-trio state URL`` — both endpoints closed, traffic on ``primary``;
2. ``rakka-trio force-open URL primary --duration 30 --reason drill`` — traffic moves to
   ``backup`` at once (``primary`` fails fast);
3. ``rakka-trio reset URL primary`` — traffic comes back.

The token travels in ``RAKKA_TOKEN``, never on the command line.
"""

from __future__ import annotations

import functools
import os
import secrets
import sys
from collections import Counter

import trio

import rakka_trio as rk
from rakka_trio.testing import MockProvider, serve_mock_provider

KEY = "sk-mock-drill-4a3b2c1d0e9f"


def config(mock: MockProvider) -> rk.SupervisorConfig:
    endpoints = [
        rk.EndpointConfig(
            name="primary",
            provider="openai",
            base_url=mock.base_url_for("openai"),
            model="drill-model",
            credential=rk.StaticCredential(KEY),
        ),
        rk.EndpointConfig(
            name="backup",
            provider="anthropic",
            base_url=mock.base_url_for("anthropic"),
            model="drill-model",
            credential=rk.StaticCredential(KEY),
        ),
    ]
    deployments = [rk.DeploymentConfig(name="chat", endpoints=["primary", "backup"])]
    return rk.SupervisorConfig(endpoints=endpoints, deployments=deployments)


async def cli(url: str, token: str, *args: str) -> str:
    """Run ``rakka-trio ARGS URL`` as a separate process, as an operator would."""
    command, *rest = args
    result = await trio.run_process(
        [sys.executable, "-m", "rakka_trio._cli", command, url, *rest],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "RAKKA_TOKEN": token},
    )
    output = (result.stdout + result.stderr).decode()
    print(f"$ rakka-trio {command} URL {' '.join(rest)}\n{output}")
    return output


async def main() -> dict[str, Counter[str]]:
    """Run the drill; return which endpoint served the requests in each phase."""
    token = secrets.token_urlsafe(18)
    phases: dict[str, Counter[str]] = {}
    served: Counter[str] = Counter()
    mock = MockProvider(api_key=KEY, chunks=4)
    async with trio.open_nursery() as services:
        await services.start(serve_mock_provider, mock)
        async with rk.open_supervisor(config(mock)) as sup:
            control = await services.start(
                functools.partial(rk.serve_control, sup, "127.0.0.1", 0, token=token)
            )
            request = rk.ChatRequest(messages=[{"role": "user", "content": "status?"}])

            async def user() -> None:
                while True:
                    reply = await sup.deployment("chat").complete(request)
                    served[reply.endpoint] += 1

            async with trio.open_nursery() as users:
                for _ in range(3):
                    users.start_soon(user)

                async def phase(name: str) -> None:
                    served.clear()
                    await trio.sleep(0.5)
                    phases[name] = Counter(served)
                    print(f"  [{name}] served by: {dict(phases[name])}\n")

                await cli(control.url, token, "state")
                await phase("before")
                await cli(
                    control.url, token, "force-open", "primary", "--duration", "30",
                    "--reason", "drill",
                )  # fmt: skip
                await phase("forced open")
                await cli(control.url, token, "reset", "primary")
                await phase("after reset")
                users.cancel_scope.cancel()
        services.cancel_scope.cancel()
    return phases


if __name__ == "__main__":
    trio.run(main)
