"""Routing: which endpoint a deployment tries first, and what "cannot serve now" means.

A :class:`Router` ranks a deployment's engines by its strategy; the submission then walks that
ranking and skips, without waiting, every endpoint that cannot serve right now (see
``Submission._admit``). Nothing here awaits: every query reads state that is already local.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from .._config import DeploymentConfig
from .._errors import (
    Backpressure,
    CircuitOpen,
    LimiterUnavailable,
    Overloaded,
    RateLimited,
    RateLimitExceeded,
    Timeout,
)
from .._events import BreakerState

if TYPE_CHECKING:
    from .._breaker import BreakerHandle
    from ._queue import Engine

#: Share of ``latency`` routing decisions that try a random endpoint, so one that recovered
#: gets measured again.
LATENCY_EXPLORATION = 0.05
#: Seconds after which an endpoint's latency estimate is forgotten (and it is tried again).
LATENCY_MEMORY = 30.0
#: Weight of the newest sample in the moving average of time to first token ...
LATENCY_SMOOTHING = 0.3
#: ... growing with the time since the previous one (seconds for about 63 %), so the first
#: fresh sample of a rarely used endpoint outweighs its old average.
LATENCY_DECAY = 2.0
#: The sample a failed call adds to the average (seconds), so a fast failure never looks fast.
LATENCY_FAILURE_SAMPLE = 5.0

# Timeouts that happen before the provider sent anything: another endpoint may answer at once.
_BEFORE_FIRST_BYTE = frozenset({"connect", "pool", "first_byte"})


def capacity_error(exc: BaseException) -> bool:
    """Whether ``exc`` says "no capacity here right now" (a 429, our own limiter, overload, a
    full queue, a timeout before the first byte): a deployment moves on at once."""
    if isinstance(
        exc, RateLimited | RateLimitExceeded | LimiterUnavailable | Overloaded | Backpressure
    ):
        return True
    return isinstance(exc, Timeout) and exc.phase in _BEFORE_FIRST_BYTE


def circuit_refusal(breaker: BreakerHandle) -> CircuitOpen | None:
    """The :class:`CircuitOpen` a call would meet now, or ``None`` if the breaker lets it go.

    Takes no half-open probe permit: the caller takes one when it is about to send.
    """
    state = breaker.state
    if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
        return None
    if state is BreakerState.HALF_OPEN:
        stats = breaker.statistics()
        if stats.probes_in_flight < breaker.config.half_open_max_probes:
            return None
        now = trio.current_time()
        return CircuitOpen(
            breaker.name,
            state=state.value,
            opened_at=stats.opened_at if stats.opened_at is not None else now,
            retry_at=now,
            reason="half-open probe limit reached",
            now=now,
        )
    # Open or forced open: the breaker's own refusal (its retry_at drives recovery waits).
    try:
        permit = breaker.check()
    except CircuitOpen as exc:
        return exc
    breaker.release(permit)  # its open time ended in between: a call may probe
    return None


class Router:
    """Ranks a deployment's engines for one request by the deployment's strategy."""

    __slots__ = ("_config", "_rng", "_strategy")

    def __init__(self, config: DeploymentConfig) -> None:
        self._config = config
        self._strategy = config.strategy
        self._rng = random.Random(config.seed)

    @property
    def strategy(self) -> str:
        """The strategy in force."""
        return self._strategy

    def rank(self, engines: Sequence[Engine]) -> list[Engine]:
        """``engines`` in the order this request should try them (best first)."""
        strategy = self._strategy
        if strategy == "ordered" or len(engines) < 2:
            return list(engines)
        if strategy == "weighted":
            # An exponential race: the first place goes to each endpoint in proportion to its
            # weight, and the rest follow in the same proportions (weight 0: last).
            rng = self._rng
            keys = {}
            for engine in engines:
                weight = self._config.weight(engine.name)
                keys[engine] = rng.expovariate(weight) if weight > 0 else math.inf
            return sorted(engines, key=keys.__getitem__)
        if strategy == "least_busy":
            return sorted(engines, key=lambda e: e.in_flight)  # stable: ties keep the order
        if strategy == "headroom":
            return sorted(engines, key=lambda e: -e.headroom())
        # latency: lowest recent time to first token; unmeasured (or forgotten) ones first so
        # they get measured, and now and then a random one so a recovered endpoint is seen.
        now = trio.current_time()
        ranked = sorted(engines, key=lambda e: e.latency_estimate(now) or 0.0)
        if self._rng.random() < LATENCY_EXPLORATION:
            explored = ranked.pop(self._rng.randrange(len(ranked)))
            explored.explore()  # its next measurement replaces the old estimate
            ranked.insert(0, explored)
        return ranked
