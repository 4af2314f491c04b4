"""The supervisor: a nursery that owns one breaker task per endpoint and everything else.

Request paths use each endpoint's :class:`BreakerHandle` synchronously. Each breaker task
sleeps until its handle's next deadline and applies timed transitions when they are due, so
OPEN → HALF_OPEN and forced-state expiry are emitted as events at the moment they happen. The
task is woken over a bounded memory channel whenever a command or a trip changes that deadline.

Supervised tasks that crash are restarted with exponential backoff; more than
``restart_intensity`` crashes within ``restart_period`` seconds fail the supervisor with
:class:`SupervisorError`. Cancellation and KeyboardInterrupt are never restarted.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._accounting import (
    CostTracker,
    DeploymentMeter,
    DeploymentStatistics,
    EndpointMeter,
    EndpointMetrics,
    PriceTable,
    TelemetrySwitch,
    can_serve,
)
from ._breaker import BreakerHandle, BreakerStatistics, check_duration
from ._call import Endpoint
from ._config import EndpointConfig, SupervisorConfig
from ._engine import Deployment, Engine, EngineStatistics
from ._errors import ConfigError, SupervisorError, UnknownEndpoint
from ._events import (
    BreakerState,
    Command,
    EndpointAdded,
    EndpointRemoved,
    Event,
    Stats,
    Subscription,
    TaskRestarted,
    Transition,
)
from ._fleet import Fleet, fleet_for_supervisor, no_fleet_error
from ._history import RecordingBus
from ._limits import LimiterHandle, LimiterRegistry, LimiterStatistics
from ._redact import redact

if TYPE_CHECKING:
    from ._fleet._link import FleetLink

__all__ = [
    "Endpoint",
    "EndpointStatistics",
    "Supervisor",
    "SupervisorStatistics",
    "open_supervisor",
    "run_supervisor",
]

log = logging.getLogger("rakka_trio.supervisor")

_WAKE_BUFFER = 1  # one pending wake-up is enough: the task re-reads the deadline anyway
_CLOSE_SESSIONS_TIMEOUT = 5.0  # seconds that closing every HTTP client may take at shutdown


@attrs.frozen(kw_only=True)
class EndpointStatistics:
    """Snapshot of one endpoint: its config identity, breaker and rate limiter.

    ``metrics`` holds requests by outcome, latency percentiles, tokens, cost and gauges;
    ``engine`` the queue and workers. The flat fields repeat the figures the control feed
    shows: calls ``in_flight``, ``queue_depth``, ``limiter_utilization`` and the recent
    ``latency_p50/p95/p99`` of completed calls (seconds).
    """

    name: str
    provider: str
    base_url: str
    breaker: BreakerStatistics
    limiter: LimiterStatistics | None = None
    metrics: EndpointMetrics | None = None
    engine: EngineStatistics | None = None
    in_flight: int | None = None
    queue_depth: int | None = None
    limiter_utilization: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None


@attrs.frozen(kw_only=True)
class SupervisorStatistics:
    """Immutable snapshot of the whole supervisor (:meth:`Supervisor.statistics`)."""

    node_id: str
    at: float
    endpoints: MappingProxyType[str, EndpointStatistics]
    subscribers: int
    events_published: int
    task_restarts: int
    deployments: MappingProxyType[str, DeploymentStatistics] = MappingProxyType({})


class _EndpointRuntime:
    """What the supervisor keeps per endpoint (internal)."""

    def __init__(self, endpoint: Endpoint, engine: Engine, meter: EndpointMeter) -> None:
        self.endpoint = endpoint
        self.engine = engine
        self.meter = meter
        self.scope = trio.CancelScope()
        self.wake_send, self.wake_recv = trio.open_memory_channel[None](_WAKE_BUFFER)

    def wake(self) -> None:
        # A full channel means a wake-up is already pending; closed means it is being removed.
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self.wake_send.send_nowait(None)


class Supervisor:
    """Owns the endpoints, their breaker tasks, the event bus and supervised tasks.

    Create it with :func:`open_supervisor` (or :func:`run_supervisor`); do not instantiate
    directly.
    """

    def __init__(self, config: SupervisorConfig, nursery: trio.Nursery) -> None:
        self._config = config
        self._nursery = nursery
        self._bus = RecordingBus(config.event_buffer)  # an EventBus that keeps history() too
        self._telemetry = TelemetrySwitch.from_environment()  # OpenTelemetry when installed
        self._runtimes: dict[str, _EndpointRuntime] = {}
        self._restarts = 0
        self._closed = False
        self._limiters = LimiterRegistry(
            node_id=config.node_id,
            redis_url=config.redis_url,
            redis_timeout=config.redis_timeout,
            publish=self._bus.publish,
            start_task=self.start_task,
        )
        # One price table for endpoints without prices of their own (most of them).
        self._prices = PriceTable(config.prices)
        self._deployments: dict[str, Deployment] = {}
        fleet = fleet_for_supervisor(self)
        self._fleet: Fleet | None = fleet[0] if fleet is not None else None
        self._fleet_link: FleetLink | None = fleet[1] if fleet is not None else None

    # --- endpoints ------------------------------------------------------------------------

    @property
    def config(self) -> SupervisorConfig:
        """The configuration the supervisor started with."""
        return self._config

    @property
    def telemetry(self) -> TelemetrySwitch:
        """Where this supervisor's calls send OpenTelemetry spans and metrics; set it with
        :func:`rakka_trio.instrument_opentelemetry`."""
        return self._telemetry

    @property
    def node_id(self) -> str:
        """This process's id in a fleet."""
        return self._config.node_id

    @property
    def fleet(self) -> Fleet:
        """This process's fleet (``SupervisorConfig.fleet``): fleet-wide commands and view.
        Raises :class:`FleetError` when no fleet is configured."""
        if self._fleet is None:
            raise no_fleet_error()
        return self._fleet

    @property
    def endpoint_names(self) -> list[str]:
        """Names of the registered endpoints, in registration order."""
        return list(self._runtimes)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name``; raises :class:`UnknownEndpoint`."""
        return self._runtime(name).endpoint

    def breaker(self, name: str) -> BreakerHandle:
        """The breaker handle of endpoint ``name`` (synchronous; share it freely)."""
        return self._runtime(name).endpoint.breaker

    def limiter(self, name: str) -> LimiterHandle:
        """The rate limiter of endpoint ``name`` (synchronous checks; share it freely)."""
        self._runtime(name)
        return self._limiters.handle(name)

    def add_endpoint(self, config: EndpointConfig) -> Endpoint:
        """Register an endpoint at runtime and start its breaker task."""
        if self._closed:
            raise RuntimeError("the supervisor is shutting down")
        if not isinstance(config, EndpointConfig):
            raise TypeError("add_endpoint expects an EndpointConfig")
        if config.name in self._runtimes:
            raise ConfigError([("name", f"endpoint {config.name!r} already exists")])
        limiter = self._limiters.add(config)
        handle = BreakerHandle(config.name, config.breaker, on_event=self._on_breaker_event)
        prices = PriceTable(config.prices, self._config.prices) if config.prices else self._prices
        meter = EndpointMeter(
            config.name,
            CostTracker(config.name, config.budget, prices, self._bus.publish),
            provider=config.provider,
            bucket_seconds=self._config.rolling_bucket,
            telemetry=self._telemetry,
        )
        endpoint = Endpoint(config, handle, limiter=limiter, meter=meter)
        # Workers start on demand in this nursery (none while the endpoint is idle).
        engine = Engine(endpoint, config.engine, spawn=self.start_task, meter=meter)
        endpoint.attach_engine(engine)
        runtime = _EndpointRuntime(endpoint, engine, meter)
        handle.set_wakeup(runtime.wake)
        self._runtimes[config.name] = runtime
        if self._fleet_link is not None:
            self._fleet_link.endpoint_added(config.name)  # a fleet override holds before any call
        self._nursery.start_soon(self._run_endpoint, runtime, name=f"breaker:{config.name}")
        self._bus.publish(EndpointAdded(at=trio.current_time(), endpoint=config.name))
        return runtime.endpoint

    def remove_endpoint(self, name: str) -> None:
        """Stop an endpoint's tasks and forget it; its handle stops receiving timer events."""
        runtime = self._runtimes.pop(name, None)
        if runtime is None:
            raise UnknownEndpoint(name)
        runtime.endpoint.breaker.set_wakeup(None)
        runtime.engine.close()  # queued requests move on (deployments) or fail; calls cancelled
        runtime.scope.cancel()
        runtime.wake_send.close()
        self._limiters.remove(name)
        # Closing the HTTP client awaits; do it beside the caller instead of blocking it.
        self._nursery.start_soon(runtime.endpoint.session.aclose, name=f"close:{name}")
        self._bus.publish(EndpointRemoved(at=trio.current_time(), endpoint=name))

    # --- operator commands ----------------------------------------------------------------

    def force_open(
        self,
        name: str,
        duration: float | None = None,
        reason: str | None = None,
        *,
        actor: str = "api",
    ) -> None:
        """Hold ``name``'s breaker open for ``duration`` seconds (``None``: until reset).

        Takes effect before this returns; an audit :class:`Command` and the
        :class:`Transition` are published.
        """
        handle = self.breaker(name)
        check_duration(duration)  # refuse before the audit trail records a command
        self._audit(name, "force_open", actor, reason, duration)
        handle.force_open(duration, reason=reason, actor=actor)

    def reset(self, name: str, reason: str | None = None, *, actor: str = "api") -> None:
        """Force-close ``name``'s breaker and clear any forced or disabled state."""
        handle = self.breaker(name)
        self._audit(name, "reset", actor, reason, None)
        handle.reset(reason=reason, actor=actor)

    def disable(
        self,
        name: str,
        duration: float | None = None,
        reason: str | None = None,
        *,
        actor: str = "api",
    ) -> None:
        """Bypass ``name``'s breaker (always pass, keep counting) for ``duration`` s or until
        reset."""
        handle = self.breaker(name)
        check_duration(duration)
        self._audit(name, "disable", actor, reason, duration)
        handle.disable(duration, reason=reason, actor=actor)

    # --- events and statistics ------------------------------------------------------------

    def open_subscription(
        self, *, buffer: int | None = None, stats: bool = True
    ) -> AbstractAsyncContextManager[Subscription]:
        """A live event stream for the ``async with`` block that opens it::

            async with sup.open_subscription() as events:
                async for event in events: ...

        The subscription starts on entry and ends on exit, so it cannot leak. ``buffer``
        bounds this subscriber's queue (default ``event_buffer``); when it is full the oldest
        events are dropped and a :class:`Lagged` marker says how many. ``stats`` selects the
        periodic :class:`Stats` snapshots. Iteration ends when the supervisor shuts down.
        """
        return self._bus.open_subscription(buffer=buffer, stats=stats)

    def subscribe(
        self, *, buffer: int | None = None, stats: bool = True
    ) -> AbstractAsyncContextManager[Subscription]:
        """Deprecated alias of :meth:`open_subscription` (also only an ``async with``)."""
        warnings.warn(
            "Supervisor.subscribe() is deprecated; use `async with sup.open_subscription()`",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._bus.open_subscription(buffer=buffer, stats=stats)

    def publish(self, event: Event) -> None:
        """Publish an event to every subscriber (used by the library's own components)."""
        self._bus.publish(event)

    def history(self) -> tuple[Transition | Command, ...]:
        """The last 200 transitions and operator commands, oldest first (a console that
        connects late gets them in its welcome)."""
        return self._bus.history.events()

    def statistics(self) -> SupervisorStatistics:
        """An immutable snapshot of every endpoint and every deployment."""
        endpoints = {name: self._endpoint_statistics(rt) for name, rt in self._runtimes.items()}
        deployments = {}
        for name, dep in self._deployments.items():
            snapshot = dep.statistics()
            serving = sum(
                1 for e in snapshot.endpoints if e in endpoints and can_serve(endpoints[e])
            )
            deployments[name] = attrs.evolve(snapshot, serving=serving)
        return SupervisorStatistics(
            node_id=self.node_id,
            at=trio.current_time(),
            endpoints=MappingProxyType(endpoints),
            subscribers=self._bus.subscriber_count,
            events_published=self._bus.published,
            task_restarts=self._restarts,
            deployments=MappingProxyType(deployments),
        )

    def _endpoint_statistics(self, rt: _EndpointRuntime) -> EndpointStatistics:
        name = rt.endpoint.name
        breaker = rt.endpoint.breaker.statistics()
        limiter = self._limiters.statistics(name)
        engine = rt.engine.statistics()
        utilization = limiter.utilisation if limiter is not None else None
        metrics = rt.meter.snapshot(
            queue_depth=engine.queue_depth,
            busy_workers=engine.busy_workers,
            workers=engine.workers,
            max_concurrent=engine.max_concurrent,
            limiter_utilization=utilization,
            breaker_state=breaker.state.value,
            limiter=limiter,
        )
        return EndpointStatistics(
            name=name,
            provider=rt.endpoint.config.provider,
            base_url=rt.endpoint.config.base_url,
            breaker=breaker,
            limiter=limiter,
            metrics=metrics,
            engine=engine,
            in_flight=metrics.in_flight,
            queue_depth=engine.queue_depth,
            limiter_utilization=utilization,
            latency_p50=metrics.latency.p50,
            latency_p95=metrics.latency.p95,
            latency_p99=metrics.latency.p99,
        )

    # --- deployments ----------------------------------------------------------------------

    def deployment(self, name: str) -> Deployment:
        """The fallback chain ``name`` from ``SupervisorConfig.deployments``; raises
        :class:`UnknownEndpoint`. Endpoints of the chain removed at runtime are skipped."""
        dep = self._deployments.get(name)
        if dep is None:
            config = next((d for d in self._config.deployments if d.name == name), None)
            if config is None:
                raise UnknownEndpoint(name, kind="deployment")
            meter = DeploymentMeter(
                name, bucket_seconds=self._config.rolling_bucket, telemetry=self._telemetry
            )
            dep = self._deployments[name] = Deployment(config, self._engine_of, meter)
        return dep

    def _engine_of(self, name: str) -> Engine | None:
        runtime = self._runtimes.get(name)
        return runtime.engine if runtime is not None else None

    # --- supervised tasks -----------------------------------------------------------------

    def start_task(self, name: str, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``async_fn(*args)`` in the supervisor's nursery under its restart policy.

        A normal return ends the task. An exception restarts it after a backoff, unless the
        restart intensity is exceeded, which fails the whole supervisor with
        :class:`SupervisorError`. Cancellation and KeyboardInterrupt propagate untouched.
        """
        self._nursery.start_soon(self._supervised, name, async_fn, *args, name=name)

    async def _supervised(
        self, name: str, async_fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        cfg = self._config
        crashes: deque[float] = deque()
        backoff = cfg.restart_backoff
        while True:
            started = trio.current_time()
            try:
                await async_fn(*args)
                return
            except Exception as exc:  # BaseExceptions (Cancelled, KeyboardInterrupt) propagate
                now = trio.current_time()
                if now - started >= cfg.restart_period:
                    backoff = cfg.restart_backoff  # it ran healthily for a while
                crashes.append(now)
                while crashes and crashes[0] <= now - cfg.restart_period:
                    crashes.popleft()
                error = redact(f"{type(exc).__name__}: {exc}")
                if len(crashes) > cfg.restart_intensity:
                    log.error(
                        "task %s crashed %d times in %.0fs; giving up",
                        name,
                        len(crashes),
                        cfg.restart_period,
                    )
                    raise SupervisorError(
                        f"task {name!r} crashed {len(crashes)} times within "
                        f"{cfg.restart_period:g}s (restart_intensity={cfg.restart_intensity}); "
                        f"last error: {error}"
                    ) from exc
                self._restarts += 1
                log.warning("task %s crashed (%s); restarting in %.2fs", name, error, backoff)
                self._bus.publish(
                    TaskRestarted(
                        at=now, task=name, error=error, crashes=len(crashes), backoff=backoff
                    )
                )
                await trio.sleep(backoff)
                backoff = min(max(backoff * 2, cfg.restart_backoff), cfg.restart_backoff_max)

    async def _run_endpoint(self, runtime: _EndpointRuntime) -> None:
        with runtime.scope:
            await self._supervised(f"breaker:{runtime.endpoint.name}", self._breaker_loop, runtime)

    @staticmethod
    async def _breaker_loop(runtime: _EndpointRuntime) -> None:
        handle = runtime.endpoint.breaker
        while True:
            handle.poll()
            with trio.move_on_at(handle.next_deadline()):
                await runtime.wake_recv.receive()

    async def _stats_loop(self) -> None:
        interval = self._config.stats_interval
        while True:
            await trio.sleep(interval)
            if self._bus.wants_stats:
                self._bus.publish(Stats(at=trio.current_time(), statistics=self.statistics()))

    # --- internals ------------------------------------------------------------------------

    def _runtime(self, name: str) -> _EndpointRuntime:
        try:
            return self._runtimes[name]
        except KeyError:
            raise UnknownEndpoint(name) from None

    def _on_breaker_event(self, event: Event) -> None:
        if isinstance(event, Transition):
            level = logging.INFO if event.to_state is BreakerState.CLOSED else logging.WARNING
            log.log(
                level,
                "breaker %s: %s -> %s (%s)",
                event.endpoint,
                event.from_state.value,
                event.to_state.value,
                event.cause,
            )
        self._bus.publish(event)

    def _audit(
        self, name: str, command: str, actor: str, reason: str | None, duration: float | None
    ) -> None:
        log.warning("operator %s: %s %s (%s)", actor, command, name, reason or "no reason given")
        self._bus.publish(
            Command(
                at=trio.current_time(),
                endpoint=name,
                command=command,
                actor=actor,
                reason=reason,
                duration=duration,
            )
        )

    def _start(self) -> None:
        for endpoint in self._config.endpoints:
            self.add_endpoint(endpoint)
        for deployment in self._config.deployments:
            self.deployment(deployment.name)  # listed in statistics() before its first request
        self.start_task("stats", self._stats_loop)

    async def _close_sessions(self) -> None:
        """Close every endpoint's HTTP clients, all at once and within one bounded wait, even
        while the supervisor is being cancelled."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_SESSIONS_TIMEOUT
            async with trio.open_nursery() as closers:
                for runtime in self._runtimes.values():
                    closers.start_soon(runtime.endpoint.session.aclose)

    def _shutdown(self) -> None:
        self._closed = True
        for runtime in self._runtimes.values():
            runtime.engine.close()  # wake readers of queued requests: nothing will serve them
        self._bus.close()


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def open_supervisor(config: SupervisorConfig) -> AsyncIterator[Supervisor]:
    """Run a supervisor for the body of an ``async with``; leaving it cancels and joins every
    task it started. A single error (from the body or a failed supervised task) is raised as
    itself rather than wrapped in an exception group."""
    if not isinstance(config, SupervisorConfig):
        raise TypeError("open_supervisor expects a SupervisorConfig")
    try:
        async with trio.open_nursery() as nursery:
            sup = Supervisor(config, nursery)
            try:
                sup._start()
                if sup._fleet_link is not None:  # fleet overrides hold before the first call
                    await sup._fleet_link.join()
                    sup.start_task("fleet", sup._fleet_link.run)
                yield sup
            finally:
                sup._shutdown()
                nursery.cancel_scope.cancel()
                await sup._close_sessions()
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


async def run_supervisor(
    config: SupervisorConfig,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Startable form: ``sup = await nursery.start(run_supervisor, cfg)``; runs until cancelled."""
    async with open_supervisor(config) as sup:
        task_status.started(sup)
        await trio.sleep_forever()
