"""The engine path: priority queues, worker pools and deployments.

Each endpoint owns an :class:`Engine`: a bounded queue with four priority classes
(CRITICAL > HIGH > NORMAL > BACKGROUND, FIFO within a class) feeding up to ``max_concurrent``
worker tasks in the supervisor's nursery. Workers start on demand and leave after
``idle_timeout`` idle seconds, so a thousand quiet endpoints cost no tasks.

``async with endpoint.submit(request) as sub`` admits a request or raises at once
(``Backpressure``, ``CircuitOpen``, ``BudgetExceeded``, ``ContextLengthExceeded``); the
:class:`Submission` is a ``trio.abc.ReceiveChannel`` of chunks that ends with exactly one
terminal :class:`Outcome`. Closing it cancels the provider call (or takes the request off the
queue). A worker streams through ``Endpoint.stream``, so breaker, limiter, retries and metrics
are the same as for a direct call.

A :class:`Deployment` routes each request by its strategy (:class:`Router`): endpoints that
cannot serve right now (breaker open, rate-limit key paused or short, queue full, budget
spent) are skipped without waiting, and a request that meets a 429, overload or an early
timeout moves to another endpoint at once; it retries in place only when no other endpoint
can serve it. It never moves after output reached the caller. The reader's own task drives
these moves: no task and no extra channel hop per request.

Layout: ``_types`` (priorities, outcomes, statistics), ``_job`` (one request on one queue),
``_queue`` (the engine), ``_routing`` (strategies and "can serve now"), ``_submission`` (the
caller's side and the routing walk), ``_deployment`` (the named group of endpoints).
"""

from ._deployment import Deployment
from ._queue import Engine
from ._routing import Router, capacity_error, circuit_refusal
from ._submission import Submission, SubmitCall
from ._types import EngineStatistics, Outcome, Priority

__all__ = [
    "Deployment",
    "Engine",
    "EngineStatistics",
    "Outcome",
    "Priority",
    "Router",
    "Submission",
    "SubmitCall",
    "capacity_error",
    "circuit_refusal",
]
