"""Rate limiting: per-key budgets admitted all-or-nothing with continuous refill.

A *key* is ``(provider, server, api-key fingerprint, model family)``: the unit a provider meters
(the server is the base URL's host and port, so two servers sharing an API key never share a
budget). Each key holds a set of limits — requests, tokens, input tokens, output tokens per
minute and concurrent requests — and an admission takes from all of them or from none. Every
limit of ``L`` per minute refills continuously at ``L/60`` per second and holds at most its
burst (requests: ten seconds' worth, so any minute admits at most ``L + burst``; tokens: one
minute's worth), so there are no fixed-window edge bursts.

The local state machine is GCRA: for each limit the key stores a *theoretical arrival time*
``tat``; the bucket holds ``(now + tau - max(tat, now)) / T`` units, where ``T = 60/L`` seconds per
unit and ``tau = burst * T``. Admission, refunds, debts and clamps are a few float operations, so
``acquire_nowait`` costs well under a microsecond and never awaits; ``wait_estimate`` answers the
same question without taking anything.

Waiting is FIFO per key: only the head of the line may take budget, so a large request is never
starved by a stream of small ones, and a waiter that is cancelled has consumed nothing (admission
and return happen in the same step, without a checkpoint in between).
Waits are bounded by ``RateLimits.max_wait``; past it a call raises ``LocalRateLimited``.

:meth:`LimiterHandle.reserve` is the full admission the calls layer uses: it takes the rate budget
for an *estimate* and a concurrency permit. :meth:`Reservation.settle` corrects the spend to the
provider's reported usage (a refund, or a debt that later admissions repay), and
:meth:`Reservation.release` returns the permit. Permits cannot leak: the reservation is a context
manager, and one dropped without release returns its permit when it is garbage-collected.

Adaptive control: :meth:`LimiterHandle.observe_headers` reads OpenAI ``x-ratelimit-*`` and
Anthropic ``anthropic-ratelimit-*`` headers, lowers the effective limit to the provider's (never
above the configured one) and clamps the bucket to ``remaining``;
:meth:`LimiterHandle.observe_rate_limited` pauses the whole key after a 429 until its Retry-After
or reset time.

The ``approximate`` and ``strict`` modes share a key's budget through Redis; their keys live in
the ``_redis_*`` modules (imported only when a shared mode is configured) and reuse the waiting,
reservation and adaptive machinery of :mod:`._key`.

Layout: ``_cost`` (dimensions, :class:`Cost`, model families), ``_headers`` (provider rate-limit
headers), ``_stats`` (events and snapshots), ``_gcra`` (bucket arithmetic), ``_key`` (the waiting
line), ``_local`` (in-process keys), ``_reservation``, ``_handle`` (the public handle),
``_registry`` (every key of a supervisor; drops idle and retired keys) and ``_redis_*`` (the
shared modes).
"""

from ._cost import Cost, model_family
from ._handle import LimiterHandle
from ._registry import LimiterRegistry
from ._reservation import Reservation
from ._stats import (
    KeyStatistics,
    LimiterFallback,
    LimiterPaused,
    LimiterStateLost,
    LimiterStatistics,
    LimitStatistics,
)

__all__ = [
    "Cost",
    "KeyStatistics",
    "LimitStatistics",
    "LimiterFallback",
    "LimiterHandle",
    "LimiterPaused",
    "LimiterRegistry",
    "LimiterStateLost",
    "LimiterStatistics",
    "Reservation",
    "model_family",
]
