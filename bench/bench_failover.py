"""P10: a rate-limited primary and a healthy backup.

The mock provider process serves two OpenAI-style providers: the *primary* answers every
request ``429`` with ``Retry-After: 3``; the *backup* is healthy. A supervisor runs a
deployment ``[primary, backup]`` (ordered fallback) and 8 concurrent loops call
``await deployment.complete(request)`` for 10 s.

First, in the same run, the floor: the same 8 loops calling the backup endpoint directly for
a few seconds (what a caller who knew the primary was out would get).

Figures: caller latency p50/p95 (every request, failed or not) against the floor's, caller
failures, and, from the mock provider's own request log, the requests that reached the
primary and those that arrived inside a Retry-After it had announced (more than 50 ms after
a 429 and before its Retry-After ran out; requests arriving within 50 ms of a 429 were
already on their way and are counted apart). Goals: p95 < 0.1 s, 0 requests inside a
Retry-After.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

import trio
from _harness import MockServerProcess, Row, percentile, print_table

import rakka_trio as rk

LOOPS = 8
DURATION = 10.0
FLOOR_DURATION = 3.0
RETRY_AFTER = 3.0
TIMEOUT = 30.0  # the deployment's per-request deadline: nothing may hang the benchmark
P95_GOAL = 0.1
REQUEST = rk.ChatRequest(messages=[{"role": "user", "content": "hello"}])


class Phase:
    """Caller-side results of one phase: latencies (s), failures by type, who served."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self.served_by: Counter[str] = Counter()


async def drive(call: Callable[[], Awaitable[rk.Completion]], duration: float) -> Phase:
    """``LOOPS`` concurrent loops of ``call`` starting requests for ``duration`` seconds."""
    phase = Phase()
    end = time.perf_counter() + duration

    async def loop() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                done = await call()
            except rk.RakkaError as exc:
                phase.failures[type(exc).__name__] += 1
            else:
                phase.served_by[done.endpoint] += 1
            phase.latencies.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(LOOPS):
            nursery.start_soon(loop)
    return phase


async def scenario(primary_url: str, backup_url: str) -> tuple[Phase, Phase]:
    cfg = rk.SupervisorConfig(
        endpoints=[
            rk.EndpointConfig(
                name="primary", provider="openai", base_url=primary_url, model="bench"
            ),
            rk.EndpointConfig(name="backup", provider="openai", base_url=backup_url, model="bench"),
        ],
        deployments=[
            rk.DeploymentConfig(name="chain", endpoints=["primary", "backup"], timeout=TIMEOUT)
        ],
    )
    async with rk.open_supervisor(cfg) as sup:
        backup, chain = sup.endpoint("backup"), sup.deployment("chain")
        floor = await drive(lambda: backup.complete(REQUEST), FLOOR_DURATION)
        if floor.failures:
            raise RuntimeError(f"the healthy backup failed alone: {dict(floor.failures)}")
        failover = await drive(lambda: chain.complete(REQUEST), DURATION)
    return floor, failover


def run() -> None:
    """Print the P10 table."""
    with MockServerProcess(chunks=16, retry_after=RETRY_AFTER) as mock:
        floor, failover = trio.run(scenario, mock.url("limited"), mock.url("healthy"))
        report = mock.stop()
    primary = report["limited"]
    p95 = percentile(failover.latencies, 95)
    calls = len(failover.latencies)
    failures = ", ".join(f"{n} {name}" for name, n in failover.failures.most_common()) or "none"
    served = ", ".join(f"{n} by {name}" for name, n in failover.served_by.most_common())
    rows = [
        Row("p50, backup alone", percentile(floor.latencies, 50) * 1e3, "ms", "floor"),
        Row(
            "p50, [primary 429, backup]",
            percentile(failover.latencies, 50) * 1e3,
            "ms",
            vs="p50, backup alone",
        ),
        Row(
            "p95, backup alone",
            percentile(floor.latencies, 95) * 1e3,
            "ms",
            "floor",
            vs="p95, backup alone",
        ),
        Row(
            "p95, [primary 429, backup]",
            p95 * 1e3,
            "ms",
            f"goal < {P95_GOAL * 1e3:.0f} ms: {'ok' if p95 < P95_GOAL else 'MISS'}",
            vs="p95, backup alone",
        ),
        Row("caller requests", calls, "", f"served {served}", vs="caller requests"),
        Row("caller failures", sum(failover.failures.values()), "", failures, vs="caller requests"),
        Row(
            "requests that reached the primary",
            primary["requests"],
            "",
            "all answered 429",
            vs="caller requests",
        ),
        Row(
            "  of which inside a Retry-After",
            primary["inside_retry_after"],
            "",
            f"goal 0: {'ok' if primary['inside_retry_after'] == 0 else 'MISS'}; "
            f"{primary['in_flight']} more already in flight when a 429 went out",
            vs="requests that reached the primary",
        ),
    ]
    print_table(
        f"P10 primary answers every request 429 + Retry-After {RETRY_AFTER:g} s, healthy "
        f"backup; {LOOPS} loops of deployment.complete for {DURATION:g} s "
        f"(floor: the backup alone for {FLOOR_DURATION:g} s, same run)",
        rows,
        baseline="p50, backup alone",
        goal=f"caller p95 < {P95_GOAL:g} s, 0 requests to the primary inside a Retry-After",
    )


if __name__ == "__main__":
    run()
