"""``rakka-trio demo``: a scripted incident, end to end, on one machine, with no keys.

A loopback mock provider (a real HTTP server on 127.0.0.1) plays a timeline scaled to
``--duration``: healthy traffic; a 503 storm on ``primary`` (OpenAI-shaped) that trips its
breaker; 429s with Retry-After on ``backup`` (Anthropic-shaped) that pause its rate-limit key but
never trip a breaker; then recovery, when half-open probes close ``primary`` again. Request
loops stream completions through the supervisor and fail over to ``backup`` while ``primary``
fails fast. The control server runs on a printed URL and token, so ``rakka-trio events`` /
``force-open`` (or the TUI) can watch and act on the incident live. A live summary is shown
while it runs, and a final report at the end.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._config import FleetConfig
from ._config._classes import (
    BreakerConfig,
    DeploymentConfig,
    EndpointConfig,
    LimiterMode,
    ModelPrice,
    RateLimits,
    RetryPolicy,
    SupervisorConfig,
)
from ._control import ControlServer, serve_control
from ._credentials import StaticCredential
from ._demo_fleet import FleetDemo
from ._demo_shared import SharedBudgets, check_redis_url, redis_problem, say, shown_redis_url
from ._errors import RakkaError
from ._events import BreakerState, Command, Transition
from ._request import ChatRequest
from ._signals import SignalShutdown, shutdown_on_signals
from ._supervisor import (
    EndpointStatistics,
    Supervisor,
    SupervisorStatistics,
    open_supervisor,
)
from .testing import Fault, MockProvider, MockRateLimits, serve_mock_provider

__all__ = ["DemoReport", "demo_main", "run_demo"]

_STATE_STYLE = {
    BreakerState.CLOSED: "green",
    BreakerState.OPEN: "bold red",
    BreakerState.HALF_OPEN: "yellow",
    BreakerState.FORCED_OPEN: "bold magenta",
    BreakerState.DISABLED: "dim",
}
_OUTCOMES = ("ok", "5xx", "429", "open")
_METRIC = {"open": "circuit_open"}  # column name -> metrics outcome name
_CAPTION = (
    "ok/5xx/429/open: requests by outcome (open: refused by the breaker); paused: 429 pauses "
    "of the rate-limit key; limiter: its utilisation now; p95: latency of completed calls"
)
_DEMO_KEY = "sk-demo-" + "0" * 24  # the mock provider's key; not a real credential
_REPLY = "Structured concurrency means every request has an owner and an outcome."
_PROMPTS = ("Summarise the incident.", "Why did the breaker open?", "Is the backup healthy?")

# Requests per minute for each endpoint, and the burst (requests admitted at once) of the
# shared budgets: one demo sends several hundred requests a second, so a shared budget of 50/s
# is used up by one process and split visibly between two.
LOCAL_BUDGETS: Mapping[str, tuple[int, int | None]] = {
    "primary": (60_000, None),
    "backup": (30_000, None),
}
SHARED_BUDGETS: Mapping[str, tuple[int, int | None]] = {
    "primary": (3_000, 50),
    "backup": (1_500, 25),
}


def _limits(budget: tuple[int, int | None], mode: LimiterMode) -> RateLimits:
    requests, burst = budget
    return RateLimits(
        requests_per_minute=requests,
        requests_burst=burst,
        tokens_per_minute=requests * 300,  # ~15 tokens a request: never the binding limit
        mode=mode,
        # Each demo runs its own mock provider on its own port; naming one scope makes demos
        # on one Redis share the budgets as replicas calling one real provider would.
        server_scope="demo-provider" if mode != "local" else None,
    )


# The incident, as fractions of the run.
STORM = (0.2, 0.5)  # primary answers 503
THROTTLE = (0.3, 0.45)  # backup answers some 429s with Retry-After


@attrs.frozen(kw_only=True)
class DemoReport:
    """What the demo observed: outcomes per endpoint, transitions and user-visible results."""

    outcomes: dict[str, dict[str, int]]
    transitions: list[tuple[float, str, str, str, str]]
    served: int
    failed: int
    trips: int
    recoveries: int
    tokens: int
    cost: float
    failures: dict[str, int]
    control_url: str
    stopped_at: float | None = None
    """Seconds into the run when it was stopped early (a signal), or ``None``."""
    shared_nodes: int | None = None
    """With ``--redis``: the most nodes seen sharing the budgets."""
    fleet_failovers: int | None = None
    """With ``--fleet``: requests that failed over while a fleet override held an endpoint."""


def demo_config(
    duration: float,
    *,
    redis_url: str | None,
    base_urls: Mapping[str, str],
    fleet: str | None = None,
) -> SupervisorConfig:
    """Endpoints tuned so the timeline shows a trip, failed probes and recovery."""
    open_duration = max(0.1, duration * 0.06)
    breaker = BreakerConfig(
        failure_threshold=5,
        failure_rate_threshold=0.5,
        minimum_calls=20,
        open_duration=open_duration,
        open_duration_max=open_duration * 3,
        half_open_max_probes=2,
        success_threshold=2,
    )
    # Failing over quickly matters more here than persistence: one quick retry, then move on.
    retry = RetryPolicy(max_retries=1, initial_backoff=0.02, max_backoff=0.1, max_server_wait=1.0)
    # Approximate: each process leases budget from Redis in the background and admits at
    # local speed, so several demo processes pointed at one Redis share one budget. Shared
    # budgets are small (a fraction of what one demo asks for) so that sharing shows: a second
    # demo on the same Redis halves what each one gets.
    mode: LimiterMode = "approximate" if redis_url else "local"
    budgets = SHARED_BUDGETS if redis_url else LOCAL_BUDGETS
    common = {
        "model": "demo-model",
        "credential": StaticCredential(_DEMO_KEY),
        "breaker": breaker,
        "retry": retry,
    }
    return SupervisorConfig(
        endpoints=[
            EndpointConfig(
                name="primary",
                provider="openai",
                base_url=base_urls["openai"],
                limits=_limits(budgets["primary"], mode),
                prices={"demo-model": ModelPrice(input=2.5, output=10.0)},
                **common,  # type: ignore[arg-type]
            ),
            EndpointConfig(
                name="backup",
                provider="anthropic",
                base_url=base_urls["anthropic"],
                limits=_limits(budgets["backup"], mode),
                prices={"demo-model": ModelPrice(input=3.0, output=15.0)},
                **common,  # type: ignore[arg-type]
            ),
        ],
        deployments=[DeploymentConfig(name="chat", endpoints=["primary", "backup"])],
        redis_url=redis_url,
        stats_interval=max(0.1, min(1.0, duration / 20)),
        # Rolling windows scaled to the run, so the storm shows in the rates and sparklines.
        rolling_bucket=max(0.5, min(10.0, duration / 20)),
        fleet=FleetConfig(name=fleet) if fleet else None,  # one node of fleet `fleet`
    )


def script_incident(mock: MockProvider, t0: float, duration: float) -> None:
    """Schedule the storm and the throttling on the mock provider's clock."""
    mock.add_fault(
        "openai",
        Fault.status(503, message="The server is overloaded. Please retry."),
        start=t0 + STORM[0] * duration,
        end=t0 + STORM[1] * duration,
    )
    mock.add_fault(
        "anthropic",
        Fault.rate_limited(retry_after=max(0.05, duration * 0.01)),
        start=t0 + THROTTLE[0] * duration,
        end=t0 + THROTTLE[1] * duration,
        probability=0.3,
    )


class _Tally:
    """What the callers saw (the endpoints' own view is in their metrics)."""

    def __init__(self) -> None:
        self.served = 0
        self.failed: Counter[str] = Counter()
        self.tokens = 0


async def _request_loop(sup: Supervisor, tally: _Tally, deadline: float, n: int) -> None:
    """One user: stream a completion through the ``chat`` deployment, again and again."""
    request = ChatRequest(messages=[{"role": "user", "content": _PROMPTS[n % len(_PROMPTS)]}])
    chat = sup.deployment("chat")
    while trio.current_time() < deadline:
        try:
            async with chat.stream(request) as chunks:
                async for _ in chunks:
                    pass
        except RakkaError as exc:
            tally.failed[type(exc).__name__] += 1
            await trio.sleep(0.01)  # every endpoint refused: don't spin
            continue
        tally.served += 1
        usage = chunks.outcome.usage if chunks.outcome is not None else None
        if usage is not None:
            tally.tokens += usage.total_tokens


def _endpoint_rows(table: Table, endpoints: Mapping[str, EndpointStatistics]) -> None:
    for name in ("primary", "backup"):
        ep = endpoints[name]
        metrics = ep.metrics
        requests = metrics.requests if metrics is not None else {}
        p95 = metrics.latency.p95 if metrics is not None else None
        limiter = ep.limiter
        table.add_row(
            name,
            Text(ep.breaker.state.value, style=_STATE_STYLE[ep.breaker.state]),
            *(str(requests.get(_METRIC.get(k, k), 0)) for k in _OUTCOMES),
            str(ep.breaker.trips),
            str(sum(k.pauses for k in limiter.keys)) if limiter is not None else "-",
            f"{limiter.utilisation:.0%}" if limiter is not None else "-",
            f"{p95 * 1000:.0f}ms" if p95 is not None else "-",
            f"{metrics.cost:.4f}" if metrics is not None else "-",
        )


def _endpoint_table(title: str) -> Table:
    # Compact borders so the table fits an 80-column terminal.
    table = Table(
        title=title,
        caption=_CAPTION,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("endpoint")
    table.add_column("state")
    for column in (*_OUTCOMES, "trips", "paused", "limiter", "p95", "cost $"):
        table.add_column(column, justify="right")
    return table


def _summary(
    sup: Supervisor,
    tally: _Tally,
    t0: float,
    duration: float,
    control: ControlServer | None,
    shared: SharedBudgets | None = None,
) -> Group:
    elapsed = min(duration, trio.current_time() - t0)
    table = _endpoint_table(f"t = {elapsed:5.1f}s of {duration:g}s")
    _endpoint_rows(table, sup.statistics().endpoints)
    lines: list[Table | Text] = [
        table,
        Text(f"user requests served {tally.served}, failed {sum(tally.failed.values())}"),
    ]
    if shared is not None:
        lines.append(shared.summary(elapsed))
    if control is not None:
        lines.append(Text(f"control: {control.url}", style="dim"))
    return Group(*lines)


async def _watch(
    sup: Supervisor,
    console: Console,
    log: list[tuple[float, str, str, str, str]],
    t0: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with sup.open_subscription(stats=False) as events:
        task_status.started()
        async for event in events:
            if isinstance(event, Transition):
                t = event.at - t0
                log.append(
                    (t, event.endpoint, event.from_state.value, event.to_state.value, event.cause)
                )
                detail = event.cause
                if event.cause == "failure_threshold":
                    detail += f", {event.consecutive_failures} consecutive failures"
                elif event.cause == "failure_rate" and event.failure_rate is not None:
                    detail += f", {event.failure_rate:.0%} of {event.calls_in_window} calls"
                elif event.cause == "forced" and event.reason:
                    detail += f" by {event.actor}: {event.reason}"
                style = _STATE_STYLE[event.to_state]
                console.print(
                    f"[dim]{t:6.2f}s[/] breaker [bold]{event.endpoint}[/]: "
                    f"{event.from_state.value} -> [{style}]{event.to_state.value}[/] ({detail})"
                )
            elif isinstance(event, Command):
                console.print(
                    f"[dim]{event.at - t0:6.2f}s[/] operator [bold]{event.actor}[/]: "
                    f"{event.command} {event.endpoint} ({event.reason or 'no reason'})"
                )


async def demo_main(
    *,
    duration: float,
    seed: int,
    concurrency: int,
    console: Console,
    redis_url: str | None = None,
    token: str | None = None,
    live: bool = True,
    on_ready: Callable[[Supervisor, ControlServer, str], None] | None = None,
    stop: Callable[[], Awaitable[object]] | None = None,
    fleet: str | None = None,
) -> DemoReport:
    """Run the scripted incident for ``duration`` seconds and return what happened.

    ``on_ready(sup, control_server, token)`` is called once everything is serving (tests and
    ``--tui`` use it to attach). When ``await stop()`` returns first (``rakka-trio demo`` passes
    :meth:`SignalShutdown.wait`), the load stops early and the report covers the run so far;
    the supervisor still leaves cleanly.
    """
    token = token or secrets.token_urlsafe(18)
    tally = _Tally()
    transitions: list[tuple[float, str, str, str, str]] = []
    # The provider advertises generous budgets: the endpoints' own (smaller, with --redis)
    # limits are what the limiter enforces; provider headers may only lower them.
    mock = MockProvider(
        api_key=_DEMO_KEY,
        reply=_REPLY,
        chunks=12,
        seed=seed,
        rate_limits=MockRateLimits(
            requests_per_minute=60_000,
            tokens_per_minute=20_000_000,
            input_tokens_per_minute=20_000_000,
            output_tokens_per_minute=20_000_000,
        ),
    )
    stopped_at: float | None = None
    async with trio.open_nursery() as services:
        await services.start(serve_mock_provider, mock)
        base_urls = {p: mock.base_url_for(p) for p in ("openai", "anthropic")}
        cfg = demo_config(duration, redis_url=redis_url, base_urls=base_urls, fleet=fleet)
        async with open_supervisor(cfg) as sup:
            control = await services.start(
                functools.partial(serve_control, sup, "127.0.0.1", 0, token=token)
            )
            shared = SharedBudgets(sup, SHARED_BUDGETS) if redis_url else None
            _print_intro(console, mock.url, control.url, token, duration, concurrency, shared)
            fleet_demo = FleetDemo(sup, fleet) if fleet else None
            if fleet_demo is not None:
                fleet_demo.print_intro(console, control.url, token)
            t0 = trio.current_time()
            script_incident(mock, t0, duration)
            async with trio.open_nursery() as watchers:
                await watchers.start(_watch, sup, console, transitions, t0)
                if fleet_demo is not None:
                    await watchers.start(fleet_demo.watch, console, t0)
                if shared is not None:
                    watchers.start_soon(shared.watch, console, t0)
                if on_ready is not None:
                    on_ready(sup, control, token)
                view = (
                    Live(console=console, refresh_per_second=4, transient=True)
                    if live and console.is_terminal
                    else None
                )
                with view if view is not None else contextlib.nullcontext():
                    async with trio.open_nursery() as load:
                        waiting_for_stop = trio.CancelScope()

                        async def stop_early(stop: Callable[[], Awaitable[object]]) -> None:
                            nonlocal stopped_at
                            with waiting_for_stop:
                                await stop()
                                stopped_at = min(duration, trio.current_time() - t0)
                                load.cancel_scope.cancel()

                        if stop is not None:
                            load.start_soon(stop_early, stop)
                        for n in range(concurrency):
                            load.start_soon(_request_loop, sup, tally, t0 + duration, n)
                        while trio.current_time() < t0 + duration:
                            if view is not None:
                                summary = _summary(sup, tally, t0, duration, control, shared)
                                view.update(summary)
                            await trio.sleep(0.25)
                        # The run is over: the loops finish the request they are in.
                        waiting_for_stop.cancel()
                await trio.sleep(0.05)  # let the last events reach the printer
                watchers.cancel_scope.cancel()
            stats = sup.statistics()
            shared_line = (
                shared.summary(stopped_at or duration, final=True) if shared is not None else None
            )
            fleet_line = fleet_demo.summary(stopped_at or duration) if fleet_demo else None
        services.cancel_scope.cancel()
    report = DemoReport(
        outcomes={
            name: dict(ep.metrics.requests) if ep.metrics is not None else {}
            for name, ep in stats.endpoints.items()
        },
        transitions=transitions,
        served=tally.served,
        failed=sum(tally.failed.values()),
        failures=dict(tally.failed),
        trips=sum(ep.breaker.trips for ep in stats.endpoints.values()),
        recoveries=sum(
            1 for *_, to, cause in transitions if to == "closed" and cause == "probe_succeeded"
        ),
        tokens=tally.tokens,
        cost=sum(ep.metrics.cost for ep in stats.endpoints.values() if ep.metrics is not None),
        control_url=control.url,
        stopped_at=stopped_at,
        shared_nodes=shared.most_nodes if shared is not None else None,
        fleet_failovers=fleet_demo.failed_over if fleet_demo is not None else None,
    )
    if stopped_at is not None:
        console.print(
            f"[bold yellow]stopped early[/] at t = {stopped_at:.1f}s of {duration:g}s: "
            "the report covers the run so far"
        )
    _print_report(console, report, stats)
    if shared_line is not None:
        console.print(shared_line)
    if fleet_line is not None:
        console.print(fleet_line)
    return report


def _print_intro(
    console: Console,
    mock_url: str,
    control_url: str,
    token: str,
    duration: float,
    concurrency: int,
    shared: SharedBudgets | None,
) -> None:
    console.print(
        f"[bold]rakka-trio demo[/]: {concurrency} request loops for {duration:g}s against "
        f"a loopback mock provider at {mock_url}.\n"
        f"  503 storm on [bold]primary[/] from {STORM[0]:.0%} to {STORM[1]:.0%} "
        f"of the run; 429s with Retry-After on [bold]backup[/] from "
        f"{THROTTLE[0]:.0%} to {THROTTLE[1]:.0%}.\n"
        f"  control server: [bold]{control_url}[/]  token: [bold]{token}[/]"
    )
    if shared is not None:
        console.print(
            f"  limits shared through Redis, kept small on purpose ({shared.describe()}): "
            "start a second `rakka-trio demo --redis URL` and watch both share them."
        )
    console.print("  follow it from another terminal (one line, copy and paste):")
    # Never wrapped: a URL broken over two lines cannot be pasted.
    console.print(
        f"RAKKA_TOKEN={token} rakka-trio events {control_url}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _print_report(console: Console, report: DemoReport, stats: SupervisorStatistics) -> None:
    table = _endpoint_table("Final report: requests each endpoint handled, by outcome")
    _endpoint_rows(table, stats.endpoints)
    console.print(table)
    # Every try with its own outcome: a storm shows here as 5xx even when the requests it
    # hit ended up refused by the breaker or served by the backup.
    tries = []
    for name, ep in stats.endpoints.items():
        if ep.metrics is not None and any(ep.metrics.attempts.values()):
            counts = ", ".join(f"{k} {v}" for k, v in ep.metrics.attempts.items() if v)
            tries.append(f"{name} {counts} ({ep.metrics.retries} retries)")
    if tries:
        console.print("attempts by outcome: " + "; ".join(tries))
    chat = stats.deployments.get("chat")
    if chat is not None and chat.fallbacks:
        by_count = sorted(chat.fallbacks.items(), key=lambda kv: (-kv[1], kv[0]))
        moves = ", ".join(f"{k} x{v}" for k, v in by_count)
        console.print(f"fallbacks from one endpoint to the next: {moves}")
    total = report.served + report.failed
    failed = f" ({report.failed / total:.1%})" if total else ""
    if report.failures:
        causes = sorted(report.failures.items(), key=lambda kv: (-kv[1], kv[0]))
        failed += " [" + ", ".join(f"{name} x{count}" for name, count in causes) + "]"
    console.print(
        f"user requests: {total}: served {report.served}, failed {report.failed}{failed}; "
        f"breaker trips: {report.trips}, recoveries: {report.recoveries}; "
        f"tokens streamed: {report.tokens:,}; cost: ${report.cost:.4f}"
    )


def exit_status(report: DemoReport) -> int:
    """0 when the breaker visibly tripped and recovered (or, in a fleet, a fleet override
    made requests fail over); otherwise 1, and why."""
    if (report.trips >= 1 and report.recoveries >= 1) or report.fleet_failovers:
        return 0
    say(
        f"exit status 1: the run did not show the whole incident (breaker trips: "
        f"{report.trips}, recoveries: {report.recoveries}). A longer --duration (5 s or more) "
        "or more --concurrency gives the breaker the traffic it needs."
    )
    return 1


def run_demo(
    *,
    duration: float = 10.0,
    seed: int = 1,
    concurrency: int = 8,
    redis_url: str | None = None,
    tui: bool = False,
    console: Console | None = None,
    fleet: str | None = None,
) -> int:
    """Run the demo in a fresh Trio run; returns the process exit status: 0 when the breaker
    visibly tripped and recovered, 1 when it did not (and why, on stderr), 2 for a bad
    argument, 3 when Redis cannot be reached, 128 + the signal's number (130, 143) when
    SIGINT or SIGTERM stopped it (after a clean leave and a partial report). With ``tui``
    the operator console is attached to it."""
    console = console or Console()
    if concurrency < 1:
        say("--concurrency must be at least 1")
        return 2
    if fleet is not None and redis_url is None:
        say("--fleet needs --redis (the fleet shares its state through Redis)")
        return 2
    if redis_url is not None:
        problem = check_redis_url(redis_url)
        if problem is not None:
            say(f"--redis: {problem}")
            return 2
        problem = trio.run(redis_problem, redis_url)
        if problem is not None:
            # Refuse rather than run on local fallback: the point of --redis is the sharing.
            say(
                f"cannot reach Redis at {shown_redis_url(redis_url)} ({problem}); start it "
                "(e.g. `redis-server`) or run the demo without --redis"
            )
            return 3
    if tui:
        from ._demo_tui import run_with_tui  # imports this module: loaded only when used

        return run_with_tui(
            duration=duration,
            seed=seed,
            concurrency=concurrency,
            redis_url=redis_url,
            console=console,
            fleet=fleet,
        )

    async def main() -> tuple[DemoReport, SignalShutdown]:
        # Ctrl-C and SIGTERM stop the load; the report and a clean leave still follow.
        async with shutdown_on_signals(cancel=False) as shutdown:
            report = await demo_main(
                duration=duration,
                seed=seed,
                concurrency=concurrency,
                console=console,
                redis_url=redis_url,
                stop=shutdown.wait,
                fleet=fleet,
            )
        return report, shutdown

    report, shutdown = trio.run(main)
    if shutdown.signal is not None and shutdown.exit_code is not None:
        say(f"stopped by {shutdown.signal.name} (exit status {shutdown.exit_code})")
        return shutdown.exit_code
    return exit_status(report)
