"""The engine path: priority queues, worker pools and deployments.

Each endpoint owns an :class:`Engine`: a bounded queue with four priority classes
(CRITICAL > HIGH > NORMAL > BACKGROUND, FIFO within a class) feeding up to ``max_concurrent``
worker tasks in the supervisor's nursery. Workers start on demand and leave after
``idle_timeout`` idle seconds, so a thousand quiet endpoints cost no tasks.

``await endpoint.submit(request)`` admits a request or raises at once (``Backpressure``,
``CircuitOpen``, ``BudgetExceeded``, ``ContextLengthExceeded``) and returns a
:class:`Submission`: the receive side of a bounded chunk channel that ends with exactly one
terminal :class:`Outcome`. Closing it cancels the provider call (or takes the request off the
queue). A worker streams through ``Endpoint.stream``, so breaker, limiter, retries and metrics
are the same as for a direct call.

A :class:`Deployment` submits to its endpoints in order. A request moves on to the next
endpoint when an endpoint refuses it (breaker open, capacity exhausted under ``fallback``,
budget, context window too small) or fails it before any output reached the caller (retries
exhausted or nothing worth retrying). The reader's own task drives these moves: no task and no
extra channel hop per request.

Layout: ``_types`` (priorities, outcomes, statistics), ``_job`` (one request on one queue),
``_queue`` (the engine), ``_submission`` (the caller's side), ``_deployment`` (routing).
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
