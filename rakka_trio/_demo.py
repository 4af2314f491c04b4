"""``rakka-trio demo``: a scripted incident driven through a real supervisor.

A simulated two-endpoint backend (in-process; the loopback HTTP mock provider replaces it once
the calls layer lands) plays a timeline scaled to ``--duration``: healthy traffic, a 503 storm
on ``primary`` that trips its breaker, 429s with Retry-After on ``backup`` (which never trip a
breaker), then recovery, when half-open probes close ``primary`` again. Load-generator tasks
call through the breakers and fail over to ``backup`` while ``primary`` fails fast. Every
breaker transition is printed the moment the supervisor emits it, with a final report.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

import attrs
import trio
from rich.console import Console
from rich.table import Table

from ._config import BreakerConfig, EndpointConfig, SupervisorConfig
from ._errors import CircuitOpen, RakkaError, RateLimited, ServerError
from ._events import BreakerState, Command, Transition
from ._supervisor import EndpointStatistics, Supervisor, open_supervisor

__all__ = ["DemoReport", "run_demo"]

_STATE_STYLE = {
    BreakerState.CLOSED: "green",
    BreakerState.OPEN: "bold red",
    BreakerState.HALF_OPEN: "yellow",
    BreakerState.FORCED_OPEN: "bold magenta",
    BreakerState.DISABLED: "dim",
}


@attrs.frozen(kw_only=True)
class DemoReport:
    """What the demo observed: outcomes per endpoint, transitions and user-visible results."""

    outcomes: dict[str, dict[str, int]]
    transitions: list[tuple[float, str, str, str, str]]
    served: int
    failed: int
    trips: int
    recoveries: int


class _ScriptedBackend:
    """An in-process provider whose behaviour follows the incident timeline."""

    def __init__(self, duration: float, rng: random.Random) -> None:
        self.start = trio.current_time()
        self.duration = duration
        self.rng = rng

    def phase(self) -> float:
        return (trio.current_time() - self.start) / self.duration

    async def request(self, endpoint: str) -> str:
        await trio.sleep(self.rng.uniform(0.005, 0.02))  # network + generation latency
        p = self.phase()
        if endpoint == "primary" and 0.2 <= p < 0.5:
            raise ServerError(
                "Service Unavailable", provider="openai", endpoint=endpoint, status=503
            )
        if endpoint == "backup" and 0.35 <= p < 0.45 and self.rng.random() < 0.3:
            raise RateLimited(
                "rate limit reached",
                provider="anthropic",
                endpoint=endpoint,
                status=429,
                retry_after=0.05,
            )
        return "ok"


def demo_config(duration: float) -> SupervisorConfig:
    """Endpoints tuned so the timeline shows a trip, probes and recovery within ``duration``."""
    open_duration = max(0.05, duration * 0.08)
    breaker = BreakerConfig(
        failure_threshold=5,
        failure_rate_threshold=0.5,
        minimum_calls=20,
        open_duration=open_duration,
        open_duration_max=open_duration * 2,
        half_open_max_probes=2,
        success_threshold=2,
    )
    return SupervisorConfig(
        endpoints=[
            EndpointConfig(
                name="primary",
                provider="openai",
                base_url="http://127.0.0.1/simulated/openai/v1",
                breaker=breaker,
            ),
            EndpointConfig(
                name="backup",
                provider="anthropic",
                base_url="http://127.0.0.1/simulated/anthropic",
                breaker=breaker,
            ),
        ],
        stats_interval=max(0.05, duration / 20),
    )


async def _load(
    sup: Supervisor,
    backend: _ScriptedBackend,
    outcomes: dict[str, Counter[str]],
    totals: Counter[str],
    deadline: float,
) -> None:
    primary, backup = sup.breaker("primary"), sup.breaker("backup")
    while trio.current_time() < deadline:
        served = False
        for handle in (primary, backup):
            try:
                await handle.call(backend.request, handle.name)
            except CircuitOpen:
                outcomes[handle.name]["circuit_open"] += 1
                continue
            except RateLimited as exc:
                outcomes[handle.name]["429"] += 1
                await trio.sleep(exc.retry_after or 0.05)
                continue
            except RakkaError as exc:
                outcomes[handle.name]["5xx" if isinstance(exc, ServerError) else "error"] += 1
                continue
            outcomes[handle.name]["ok"] += 1
            served = True
            break
        totals["served" if served else "failed"] += 1


async def _print_events(
    sup: Supervisor,
    console: Console,
    log: list[tuple[float, str, str, str, str]],
    t0: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with sup.subscribe(stats=False) as events:
        task_status.started()
        async for event in events:
            if isinstance(event, Transition):
                t = event.at - t0
                log.append(
                    (t, event.endpoint, event.from_state.value, event.to_state.value, event.cause)
                )
                style = _STATE_STYLE[event.to_state]
                detail = event.cause
                if event.cause == "failure_threshold":
                    detail += f", {event.consecutive_failures} consecutive failures"
                elif event.cause == "failure_rate" and event.failure_rate is not None:
                    detail += f", {event.failure_rate:.0%} of {event.calls_in_window} calls"
                console.print(
                    f"[dim]{t:6.2f}s[/] breaker [bold]{event.endpoint}[/]: "
                    f"{event.from_state.value} -> [{style}]{event.to_state.value}[/] ({detail})"
                )
            elif isinstance(event, Command):
                console.print(
                    f"[dim]{event.at - t0:6.2f}s[/] operator {event.actor}: "
                    f"{event.command} {event.endpoint} ({event.reason})"
                )


async def demo_main(
    *, duration: float, seed: int, concurrency: int, console: Console
) -> DemoReport:
    """Run the scripted incident for ``duration`` seconds and return what happened."""
    rng = random.Random(seed)
    outcomes: dict[str, Counter[str]] = {"primary": Counter(), "backup": Counter()}
    totals: Counter[str] = Counter()
    transitions: list[tuple[float, str, str, str, str]] = []
    console.print(
        f"[bold]rakka-trio demo[/]: {concurrency} request loops for {duration:g}s; "
        "a 503 storm hits [bold]primary[/] at 20% and ends at 50%, "
        "[bold]backup[/] answers some 429s with Retry-After around 40%."
    )
    async with open_supervisor(demo_config(duration)) as sup:
        t0 = trio.current_time()
        backend = _ScriptedBackend(duration, rng)
        async with trio.open_nursery() as watchers:
            await watchers.start(_print_events, sup, console, transitions, t0)
            async with trio.open_nursery() as load:
                for _ in range(concurrency):
                    load.start_soon(_load, sup, backend, outcomes, totals, t0 + duration)
            # Let the events already emitted reach the printer before stopping it.
            await trio.sleep(0.01)
            watchers.cancel_scope.cancel()
        stats = sup.statistics()
    trips = sum(s.breaker.trips for s in stats.endpoints.values())
    recoveries = sum(
        1 for _, _, frm, to, cause in transitions if to == "closed" and cause == "probe_succeeded"
    )
    report = DemoReport(
        outcomes={name: dict(c) for name, c in outcomes.items()},
        transitions=transitions,
        served=totals["served"],
        failed=totals["failed"],
        trips=trips,
        recoveries=recoveries,
    )
    _print_report(console, report, stats.endpoints)
    return report


def _print_report(
    console: Console, report: DemoReport, endpoints: Mapping[str, EndpointStatistics]
) -> None:
    table = Table(title="Outcomes by endpoint")
    table.add_column("endpoint")
    for column in ("ok", "5xx", "429", "circuit_open", "error"):
        table.add_column(column, justify="right")
    table.add_column("trips", justify="right")
    table.add_column("final state")
    for name, counts in report.outcomes.items():
        breaker = endpoints[name].breaker
        table.add_row(
            name,
            *(str(counts.get(c, 0)) for c in ("ok", "5xx", "429", "circuit_open", "error")),
            str(breaker.trips),
            f"[{_STATE_STYLE[breaker.state]}]{breaker.state.value}[/]",
        )
    console.print(table)
    total = report.served + report.failed
    console.print(
        f"user requests: {total} — served {report.served}, failed {report.failed}; "
        f"breaker trips: {report.trips}, recoveries: {report.recoveries}"
    )


def run_demo(
    *, duration: float = 8.0, seed: int = 1, concurrency: int = 8, console: Console | None = None
) -> int:
    """Run the demo in a fresh Trio run; returns the process exit status."""
    console = console or Console()
    report = trio.run(
        lambda: demo_main(duration=duration, seed=seed, concurrency=concurrency, console=console)
    )
    return 0 if report.trips >= 1 and report.recoveries >= 1 else 1
