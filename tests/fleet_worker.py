"""One node process of the fleet tests.

Run as ``python tests/fleet_worker.py --url redis://... --fleet NAME --node ID``: it serves a
loopback mock provider of its own, opens a supervisor in the fleet with two endpoints on it
(``primary`` and ``backup``) and, as soon as ``open_supervisor`` hands the supervisor over,
sends its first request to ``primary``. It prints one JSON line per fact, flushed:

* ``{"event": "ready", "node", "first_request": "ok" | error class, "states": {...},
  "provider_requests": N}`` — what that first request met, and how many requests the mock
  provider had received by then;
* ``{"event": "transition", "endpoint", "to", "cause", "actor", "wall"}`` — every breaker
  transition afterwards, with its Unix time;
* ``{"event": "request", "result": "ok" | error class, "provider_requests": N}`` — for each
  ``request`` line read on its standard input: one request through the ``chat`` deployment
  (``primary``, then ``backup``).

It runs until its standard input closes (then leaves the fleet cleanly) or it is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import trio

import rakka_trio as rk
from rakka_trio.testing import MockProvider, serve_mock_provider

KEY = "sk-fleet-worker-key-0001"
REQUEST = rk.ChatRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
)


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def serve_stdin(sup: rk.Supervisor, mock: MockProvider) -> None:
    """Answer ``request`` lines until standard input closes."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with stream:
        while data := await stream.receive_some():
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() == b"request":
                    try:
                        await sup.deployment("chat").complete(REQUEST)
                        result = "ok"
                    except rk.RakkaError as exc:
                        result = type(exc).__name__
                    emit(
                        event="request",
                        result=result,
                        provider_requests=mock.statistics().requests,
                    )


async def run(args: argparse.Namespace) -> None:
    mock = MockProvider(api_key=KEY, reply="hello", chunks=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, mock)
        endpoints = [
            rk.EndpointConfig(
                name=name,
                provider="openai",
                base_url=mock.base_url_for("openai"),
                credential=rk.StaticCredential(KEY),
                retry=rk.RetryPolicy(max_retries=0),
            )
            for name in ("primary", "backup")
        ]
        config = rk.SupervisorConfig(
            redis_url=args.url,
            node_id=args.node,
            fleet=rk.FleetConfig(name=args.fleet, publish_interval=0.5, node_ttl=3.0),
            endpoints=endpoints,
            deployments=[rk.DeploymentConfig(name="chat", endpoints=["primary", "backup"])],
        )
        async with rk.open_supervisor(config) as sup:
            try:
                await sup.endpoint("primary").complete(REQUEST)
                first = "ok"
            except rk.RakkaError as exc:
                first = type(exc).__name__
            emit(
                event="ready",
                node=args.node,
                first_request=first,
                states={name: sup.breaker(name).state.value for name in sup.endpoint_names},
                provider_requests=mock.statistics().requests,
            )
            async with sup.open_subscription(stats=False) as events:
                nursery.start_soon(_print_transitions, events)
                await serve_stdin(sup, mock)
            nursery.cancel_scope.cancel()


async def _print_transitions(events: rk.Subscription) -> None:
    async for event in events:
        if isinstance(event, rk.Transition):
            emit(
                event="transition",
                endpoint=event.endpoint,
                to=event.to_state.value,
                cause=event.cause,
                actor=event.actor,
                wall=time.time(),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--node", required=True)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
