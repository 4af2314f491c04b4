"""A two-endpoint fallback chain riding out a 503 storm on the primary: no failed requests.

Run: ``uv run python examples/fallback_chain.py``

The loopback mock provider serves an OpenAI-shaped primary and an Anthropic-shaped backup. For
the first 1.5 seconds every call to the primary gets a 503. Users stream requests through the
``chat`` deployment the whole time: failed calls move on to the backup, the primary's breaker
opens so later requests skip it without sending anything, and once the storm is over a
half-open probe closes the breaker and traffic returns to the primary. The report at the end
counts outcomes, who served what, every attempt by its own outcome (the storm shows as 5xx
attempts on the primary even though no user request failed), fallbacks and breaker trips,
then prints a few Prometheus lines.
"""

from __future__ import annotations

from collections import Counter

import trio

import rakka_trio as rk
from rakka_trio.testing import Fault, MockProvider, serve_mock_provider

STORM = 1.5  # seconds of 503s on the primary
DURATION = 3.0  # seconds of traffic
USERS = 4


def config(mock: MockProvider) -> rk.SupervisorConfig:
    retry = rk.RetryPolicy(max_retries=1, initial_backoff=0.02, max_backoff=0.05)
    breaker = rk.BreakerConfig(failure_threshold=3, open_duration=0.3, open_duration_max=0.6)
    return rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="primary",
                provider="openai",
                base_url=mock.base_url_for("openai"),
                model="gpt-4o-mini",
                retry=retry,
                breaker=breaker,
            ),
            rk.EndpointConfig(
                name="backup",
                provider="anthropic",
                base_url=mock.base_url_for("anthropic"),
                model="claude-3-5-haiku",
                retry=retry,
            ),
        ],
        deployments=[rk.DeploymentConfig(name="chat", endpoints=["primary", "backup"])],
    )


async def main() -> dict[str, object]:
    """Run the scenario; return the report's figures."""
    mock = MockProvider(reply="Served despite the storm.", chunks=4)
    served: Counter[str] = Counter()
    after_storm: Counter[str] = Counter()
    failed: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_mock_provider, mock)
        async with (
            rk.open_supervisor(config(mock)) as sup,
            sup.open_subscription(stats=False) as events,
        ):
            start = trio.current_time()
            mock.add_fault("openai", Fault.status(503), start=start, end=start + STORM)
            dep = sup.deployment("chat")
            request = rk.ChatRequest(messages=[{"role": "user", "content": "status?"}])

            async def user() -> None:
                while trio.current_time() - start < DURATION:
                    try:
                        async with dep.stream(request) as chunks:
                            text = "".join([chunk.text async for chunk in chunks])
                    except rk.RakkaError as exc:  # would be a failed user request
                        failed.append(type(exc).__name__)
                        continue
                    assert chunks.outcome is not None and chunks.outcome.endpoint is not None
                    served[chunks.outcome.endpoint] += 1
                    if trio.current_time() - start > STORM + 1.0:
                        after_storm[chunks.outcome.endpoint] += 1
                    assert text == "Served despite the storm."
                    await trio.sleep(0.02)

            async with trio.open_nursery() as users:
                for _ in range(USERS):
                    users.start_soon(user)

            transitions = []
            while True:
                try:
                    event = events.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(event, rk.Transition):
                    transitions.append(f"{event.from_state} -> {event.to_state} ({event.cause})")
            stats = dep.statistics()
            primary = sup.breaker("primary").statistics()
            attempts = {}
            for name, ep in sup.statistics().endpoints.items():
                assert ep.metrics is not None
                attempts[name] = {k: v for k, v in ep.metrics.attempts.items() if v}
            metrics_text = rk.prometheus_text(sup)
        nursery.cancel_scope.cancel()

    total = sum(served.values()) + len(failed)
    print(f"{total} requests in {DURATION:g}s, {len(failed)} failed")
    print(f"served by: {dict(served)}")
    print(f"served in the last {DURATION - STORM - 1.0:g}s (storm long over): {dict(after_storm)}")
    print(f"attempts by outcome: {attempts}")
    print(f"fallbacks: {dict(stats.fallbacks)}")
    print("primary breaker: " + "; ".join(transitions))
    print(f"primary trips: {primary.trips}, now {primary.state}")
    for line in metrics_text.splitlines():
        if line.startswith(("rakka_requests_total", "rakka_attempts_total")) and not (
            line.endswith(" 0")
        ):
            print("  " + line)
    return {
        "requests": total,
        "failed": failed,
        "served": dict(served),
        "after_storm": dict(after_storm),
        "attempts": attempts,
        "fallbacks": dict(stats.fallbacks),
        "trips": primary.trips,
        "state": primary.state,
    }


if __name__ == "__main__":
    trio.run(main)
