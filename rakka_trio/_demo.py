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
import io
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

import attrs
import trio
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

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
from ._errors import RakkaError
from ._events import BreakerState, Command, Transition
from ._request import ChatRequest
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


def demo_config(
    duration: float, *, redis_url: str | None, base_urls: Mapping[str, str]
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
    # local speed, so several demo processes pointed at one Redis share one budget.
    mode: LimiterMode = "approximate" if redis_url else "local"
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
                limits=RateLimits(
                    requests_per_minute=60_000, tokens_per_minute=20_000_000, mode=mode
                ),
                prices={"demo-model": ModelPrice(input=2.5, output=10.0)},
                **common,  # type: ignore[arg-type]
            ),
            EndpointConfig(
                name="backup",
                provider="anthropic",
                base_url=base_urls["anthropic"],
                limits=RateLimits(
                    requests_per_minute=30_000, tokens_per_minute=10_000_000, mode=mode
                ),
                prices={"demo-model": ModelPrice(input=3.0, output=15.0)},
                **common,  # type: ignore[arg-type]
            ),
        ],
        deployments=[DeploymentConfig(name="chat", endpoints=["primary", "backup"])],
        redis_url=redis_url,
        stats_interval=max(0.1, min(1.0, duration / 20)),
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
    sup: Supervisor, tally: _Tally, t0: float, duration: float, control: ControlServer | None
) -> Group:
    elapsed = min(duration, trio.current_time() - t0)
    table = _endpoint_table(f"t = {elapsed:5.1f}s of {duration:g}s")
    _endpoint_rows(table, sup.statistics().endpoints)
    lines: list[Table | Text] = [
        table,
        Text(f"user requests served {tally.served}, failed {sum(tally.failed.values())}"),
    ]
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
) -> DemoReport:
    """Run the scripted incident for ``duration`` seconds and return what happened.

    ``on_ready(sup, control_server, token)`` is called once everything is serving (tests and
    ``--tui`` use it to attach).
    """
    token = token or secrets.token_urlsafe(18)
    tally = _Tally()
    transitions: list[tuple[float, str, str, str, str]] = []
    # The provider advertises the same budgets the endpoints are configured with, so its
    # rate-limit headers (which the limiter adapts to) tell the same story as the config.
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
    async with trio.open_nursery() as services:
        await services.start(serve_mock_provider, mock)
        base_urls = {p: mock.base_url_for(p) for p in ("openai", "anthropic")}
        cfg = demo_config(duration, redis_url=redis_url, base_urls=base_urls)
        async with open_supervisor(cfg) as sup:
            control = await services.start(
                functools.partial(serve_control, sup, "127.0.0.1", 0, token=token)
            )
            console.print(
                f"[bold]rakka-trio demo[/]: {concurrency} request loops for {duration:g}s against "
                f"a loopback mock provider at {mock.url}.\n"
                f"  503 storm on [bold]primary[/] from {STORM[0]:.0%} to {STORM[1]:.0%} "
                f"of the run; 429s with Retry-After on [bold]backup[/] from "
                f"{THROTTLE[0]:.0%} to {THROTTLE[1]:.0%}.\n"
                f"  control server: [bold]{control.url}[/]  token: [bold]{token}[/]\n"
                f"  try: RAKKA_TOKEN={token} rakka-trio events {control.url}"
            )
            t0 = trio.current_time()
            script_incident(mock, t0, duration)
            async with trio.open_nursery() as watchers:
                await watchers.start(_watch, sup, console, transitions, t0)
                if on_ready is not None:
                    on_ready(sup, control, token)
                view = (
                    Live(console=console, refresh_per_second=4, transient=True)
                    if live and console.is_terminal
                    else None
                )
                with view if view is not None else contextlib.nullcontext():
                    async with trio.open_nursery() as load:
                        for n in range(concurrency):
                            load.start_soon(_request_loop, sup, tally, t0 + duration, n)
                        while trio.current_time() < t0 + duration:
                            if view is not None:
                                view.update(_summary(sup, tally, t0, duration, control))
                            await trio.sleep(0.25)
                await trio.sleep(0.05)  # let the last events reach the printer
                watchers.cancel_scope.cancel()
            stats = sup.statistics()
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
    )
    _print_report(console, report, stats)
    return report


def _print_report(console: Console, report: DemoReport, stats: SupervisorStatistics) -> None:
    table = _endpoint_table("Final report: requests each endpoint handled, by outcome")
    _endpoint_rows(table, stats.endpoints)
    console.print(table)
    chat = stats.deployments.get("chat")
    if chat is not None and chat.fallbacks:
        moves = ", ".join(f"{k} x{v}" for k, v in sorted(chat.fallbacks.items()))
        console.print(f"fallbacks from one endpoint to the next: {moves}")
    total = report.served + report.failed
    failed = f" ({report.failed / total:.1%})" if total else ""
    console.print(
        f"user requests: {total}: served {report.served}, failed {report.failed}{failed}; "
        f"breaker trips: {report.trips}, recoveries: {report.recoveries}; "
        f"tokens streamed: {report.tokens:,}; cost: ${report.cost:.4f}"
    )


def run_demo(
    *,
    duration: float = 10.0,
    seed: int = 1,
    concurrency: int = 8,
    redis_url: str | None = None,
    tui: bool = False,
    console: Console | None = None,
) -> int:
    """Run the demo in a fresh Trio run; returns the process exit status (0 when the breaker
    visibly tripped and recovered). With ``tui`` the operator console is attached to it."""
    console = console or Console()
    if tui:
        return _run_with_tui(
            duration=duration,
            seed=seed,
            concurrency=concurrency,
            redis_url=redis_url,
            console=console,
        )
    report = trio.run(
        functools.partial(
            demo_main,
            duration=duration,
            seed=seed,
            concurrency=concurrency,
            console=console,
            redis_url=redis_url,
        )
    )
    return 0 if report.trips >= 1 and report.recoveries >= 1 else 1


def _run_with_tui(
    *, duration: float, seed: int, concurrency: int, redis_url: str | None, console: Console
) -> int:
    """The demo in a worker thread (its own Trio run) and the TUI in this one, attached to the
    demo's control server. The demo's own output is kept until the TUI closes, then printed;
    quitting the TUI early stops the demo."""
    from rakka_trio_tui._command import run_tui

    captured = Console(file=io.StringIO(), width=console.width, force_terminal=False)
    ready: queue.Queue[tuple[str, str] | BaseException] = queue.Queue()
    results: list[DemoReport] = []
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        def on_ready(sup: Supervisor, control: ControlServer, token: str) -> None:
            trio_token = trio.lowlevel.current_trio_token()
            stop.append(lambda: trio.from_thread.run_sync(scope.cancel, trio_token=trio_token))
            ready.put((control.url, token))

        with trio.CancelScope() as scope:
            results.append(
                await demo_main(
                    duration=duration,
                    seed=seed,
                    concurrency=concurrency,
                    console=captured,
                    redis_url=redis_url,
                    live=False,
                    on_ready=on_ready,
                )
            )

    def worker() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the main thread, which reports it
            ready.put(exc)

    thread = threading.Thread(target=worker, name="rakka-trio-demo", daemon=True)
    thread.start()
    first = ready.get(timeout=60)
    if isinstance(first, BaseException):
        raise first
    url, token = first
    load_ends = time.monotonic() + duration
    try:
        run_tui(url, token=token, client_name="demo-tui")
    finally:
        # Quitting the console before the incident is over stops the demo; after that, the
        # demo is only writing its report, so let it finish.
        if thread.is_alive() and stop and time.monotonic() < load_ends:
            with contextlib.suppress(trio.RunFinishedError):
                stop[0]()
        thread.join(timeout=30)
    output = captured.file.getvalue() if isinstance(captured.file, io.StringIO) else ""
    console.print(output, end="", markup=False, highlight=False)
    if not results:
        console.print("(the demo was stopped before its end)")
        return 1
    report = results[0]
    return 0 if report.trips >= 1 and report.recoveries >= 1 else 1
