"""Deployments: one request routed across several endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .._accounting import DeploymentMeter, DeploymentStatistics
from .._config import DeploymentConfig
from .._errors import (
    UnknownEndpoint,
)
from .._request import ChatRequest, Completion

if TYPE_CHECKING:
    pass
from ._job import deadline_after
from ._submission import Submission
from ._types import Priority

if TYPE_CHECKING:
    from ._queue import Engine


class Deployment:
    """A named fallback chain over endpoints (``sup.deployment("chat")``; see docs/engine.md).

    ``stream``, ``complete`` and ``submit`` go through the endpoints' engines in order. A
    request moves on when an endpoint's breaker is open, its capacity is exhausted (with
    ``on_full="fallback"``), its budget rejects, the request is too large for its context
    window, or it failed before any output reached the caller with an error its retries could
    not fix (server errors, timeouts, network errors, rate limits, exhausted quota). It never
    moves after output was delivered, and requests marked ``idempotent=False`` move only on
    refusals that sent nothing. With ``wait_for_recovery``, a request that finds every breaker
    open waits for the first to recover, within its deadline.

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

    async def submit(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Submission:
        """Admit ``request`` to the first endpoint that takes it; returns the
        :class:`Submission`.

        The request's deadline is the caller's effective Trio deadline (``with
        trio.fail_after(...)`` around the call), or the deployment's ``timeout`` if sooner; it
        bounds everything: queueing, fallbacks, waits for recovery and the calls.
        """
        chain = [e for e in map(self._engines, self._config.endpoints) if e is not None]
        if not chain:
            raise UnknownEndpoint(self._config.endpoints[0])
        sub = Submission(
            request,
            priority,
            deadline_after(self._config.timeout),
            chain,
            meter=self._meter,
            wait_for_recovery=self._config.wait_for_recovery,
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
        sub = await self.submit(request, priority=priority)
        async with sub:
            yield sub

    async def complete(
        self,
        request: ChatRequest,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> Completion:
        """The whole completion through the chain (``Completion.endpoint`` says which
        endpoint served it)."""
        sub = await self.submit(request, priority=priority)
        async with sub:
            return await sub.result()

    def statistics(self) -> DeploymentStatistics:
        """Requests by final outcome and fallbacks so far."""
        return self._meter.snapshot(self._config.endpoints)

    def __repr__(self) -> str:
        return f"<Deployment {self.name!r} {' -> '.join(self._config.endpoints)}>"
