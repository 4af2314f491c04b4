"""Deployments: one request routed across several endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .._accounting import DeploymentMeter, DeploymentStatistics
from .._config import DeploymentConfig
from .._errors import UnknownEndpoint
from .._request import ChatRequest, Completion
from ._job import deadline_after
from ._routing import Router
from ._submission import Submission, SubmitCall
from ._types import Priority

if TYPE_CHECKING:
    from ._queue import Engine


class Deployment:
    """Endpoints serving one kind of request (``sup.deployment("chat")``; see docs/engine.md).

    ``stream``, ``complete`` and ``submit`` go through the endpoints' engines, in the order the
    deployment's strategy ranks them for each request (``ordered``: as listed). Endpoints that
    cannot serve right now are skipped without waiting: breaker open, rate-limit key paused
    or short of budget, queue full (with ``on_full="fallback"``), budget spent, context window
    too small. A request that meets a 429, overload or a timeout before the first byte moves
    to another endpoint at once, and is retried on the same endpoint only when no other can
    serve it; after other errors its retries run first (unless ``failover_on_first_error``).
    It never moves after output was delivered, and requests marked ``idempotent=False`` move
    only on refusals that sent nothing. With ``wait_for_recovery``, a request that finds every
    breaker open waits for the first to recover, within its deadline.

    Leave ``request.model`` unset so each endpoint uses its own configured model.
    """

    def __init__(
        self,
        config: DeploymentConfig,
        engines: Callable[[str], Engine | None],
        meter: DeploymentMeter | None = None,
    ) -> None:
        self._config = config
        self._engines = engines
        self._meter = meter if meter is not None else DeploymentMeter(config.name)
        self._meter.strategy = config.strategy
        self._router = Router(config)

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self._config.name

    @property
    def config(self) -> DeploymentConfig:
        """The deployment's configuration."""
        return self._config

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The chain's endpoint names, in order."""
        return tuple(self._config.endpoints)

    @property
    def strategy(self) -> str:
        """The routing strategy (``DeploymentConfig.strategy``)."""
        return self._config.strategy

    def submit(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> SubmitCall:
        """Admit ``request`` to the best endpoint that takes it: ``async with
        dep.submit(req) as sub:`` (closed on exit), or ``sub = await dep.submit(req)``.

        The request's deadline is the caller's effective Trio deadline (``with
        trio.fail_after(...)`` around the call), or the deployment's ``timeout`` if sooner; it
        bounds everything: queueing, fallbacks, waits for recovery and the calls.
        """
        return SubmitCall(self._submit, request, priority)

    async def _submit(self, request: ChatRequest, priority: Priority) -> Submission:
        config = self._config
        chain = [e for e in map(self._engines, config.endpoints) if e is not None]
        if not chain:
            raise UnknownEndpoint(config.endpoints[0])
        sub = Submission(
            request,
            priority,
            deadline_after(config.timeout),
            chain,
            router=self._router,
            meter=self._meter,
            wait_for_recovery=config.wait_for_recovery,
            failover_on_first_error=config.failover_on_first_error,
        )
        await sub._start()
        return sub

    @asynccontextmanager
    async def stream(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> AsyncIterator[Submission]:
        """``async with dep.stream(req) as chunks: async for chunk in chunks`` through the
        chain; leaving the block closes the submission (cancelling the call)."""
        async with self.submit(request, priority=priority) as sub:
            yield sub

    async def complete(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Completion:
        """The whole completion through the chain (``Completion.endpoint`` says which
        endpoint served it)."""
        async with self.submit(request, priority=priority) as sub:
            return await sub.result()

    def statistics(self) -> DeploymentStatistics:
        """Requests by final outcome and fallbacks (by endpoint left, destination and cause)
        so far."""
        return self._meter.snapshot(self._config.endpoints)

    def __repr__(self) -> str:
        endpoints = ", ".join(self._config.endpoints)
        return f"<Deployment {self.name!r} {self._config.strategy} [{endpoints}]>"
