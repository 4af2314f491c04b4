"""Embed a rakka-trio supervisor in a Trio app and watch a breaker trip and recover.

Run: ``uv run python examples/breaker_basics.py``

A flaky coroutine stands in for a provider call: it fails with 503s for a while, then
recovers. The breaker trips after three consecutive failures, fails fast while open, probes
after ``open_duration`` and closes again; every transition is printed as it happens.

Three ways to guard a call, all equivalent: ``await breaker.call(fn, *args)``,
``async with breaker.guard(): ...``, or the raw permit API that both are built on (``ask``
below): ``check()`` admits the call and returns its permit, and the call's outcome is
reported on that permit exactly once.
"""

from __future__ import annotations

import trio

import rakka_trio as rk

CONFIG = rk.SupervisorConfig(
    endpoints=[
        rk.EndpointConfig(
            name="primary",
            provider="openai",
            base_url="https://api.openai.com/v1",
            breaker=rk.BreakerConfig(failure_threshold=3, open_duration=0.2),
        )
    ]
)


class FlakyProvider:
    """Fails with HTTP 503 for its first ``bad_calls`` calls, then answers."""

    def __init__(self, bad_calls: int) -> None:
        self.calls = 0
        self.bad_calls = bad_calls

    async def complete(self, prompt: str) -> str:
        await trio.sleep(0.01)
        self.calls += 1
        if self.calls <= self.bad_calls:
            raise rk.classify_http_status(503, {}, b'{"error": {"message": "overloaded"}}')
        return f"echo: {prompt}"


async def ask(breaker: rk.BreakerHandle, provider: FlakyProvider, prompt: str) -> str:
    """One guarded call with the raw permit API."""
    permit = breaker.check()  # raises rk.CircuitOpen while the breaker is open
    try:
        answer = await provider.complete(prompt)
    except BaseException as exc:
        breaker.record_failure(permit, exc)  # cancellation, 429 and other 4xx never count
        raise
    breaker.record_success(permit)
    return answer


async def watch(sup: rk.Supervisor, *, task_status: trio.TaskStatus[None]) -> None:
    async with sup.open_subscription(stats=False) as events:
        task_status.started()
        async for event in events:
            if isinstance(event, rk.Transition):
                print(
                    f"  [{event.endpoint}] {event.from_state} -> {event.to_state} ({event.cause})"
                )


async def main() -> list[str]:
    """Send requests until five succeed; return what the caller saw, in order."""
    provider = FlakyProvider(bad_calls=3)
    seen: list[str] = []
    async with rk.open_supervisor(CONFIG) as sup, trio.open_nursery() as nursery:
        await nursery.start(watch, sup)
        breaker = sup.breaker("primary")
        while seen.count("ok") < 5:
            try:
                if len(seen) % 2:
                    await ask(breaker, provider, "hi")
                else:
                    async with breaker.guard():
                        await provider.complete("hi")
                seen.append("ok")
            except rk.CircuitOpen:
                seen.append("fail-fast")
                await trio.sleep(0.05)
            except rk.ServerError:
                seen.append("503")
        print("outcomes:", " ".join(seen))
        print("statistics:", sup.statistics().endpoints["primary"].breaker)
        nursery.cancel_scope.cancel()
    return seen


if __name__ == "__main__":
    trio.run(main)
