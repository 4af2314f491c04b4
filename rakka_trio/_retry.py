"""Retry decisions: backoff with jitter, server hints, deadlines, per-error caps and a budget.

:class:`Retrier` is the pure decision maker (``next_delay``) plus a small async wrapper
(``run``). The success path costs one counter increment and one await: the clock is read only
when a call has failed. :class:`RetryBudget` keeps retries to a fraction of recent requests per
endpoint (Envoy/gRPC style) so a retry storm cannot amplify an outage; its windows are
exponentially decayed counts, so recording a request needs no timestamp.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import attrs
import trio

from ._config import RetryPolicy
from ._errors import DeadlineExceeded, LocalRateLimited, QuotaExhausted, RakkaError

__all__ = ["Retrier", "RetryBudget", "RetryDecision"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_BUDGET_WINDOW = 10.0  # seconds over which the budget's request and retry counts decay


class RetryBudget:
    """Retries allowed <= ``ratio`` * recent requests + ``min_per_second`` * window.

    Counts decay exponentially with a ``window``-second time constant. Share one budget per
    endpoint across every caller.
    """

    __slots__ = ("_clock", "_last", "_min", "_ratio", "_requests", "_retries", "_window", "pending")

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        *,
        window: float = _BUDGET_WINDOW,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._ratio = ratio
        self._min = min_per_second * window
        self._window = window
        self._clock = clock
        self._requests = 0.0
        self._retries = 0.0
        self._last: float | None = None
        self.pending = 0  # requests recorded since the last decay (hot path: a bare increment)

    def _decay(self) -> None:
        now = self._clock()
        if self._last is not None:
            factor = math.exp(-(now - self._last) / self._window)
            self._requests *= factor
            self._retries *= factor
        self._last = now
        self._requests += self.pending
        self.pending = 0

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is room; False means do not retry."""
        self._decay()
        if self._retries + 1 <= self._ratio * self._requests + self._min:
            self._retries += 1
            return True
        return False

    def statistics(self) -> tuple[float, float]:
        """(decayed recent requests, decayed recent retries)."""
        self._decay()
        return self._requests, self._retries


@attrs.frozen
class RetryDecision:
    """Why a failed attempt is or is not retried, and after how long."""

    retry: bool
    delay: float
    reason: str


class Retrier:
    """Applies a :class:`RetryPolicy`: ``await retrier.run(fn, *args)``.

    ``rng`` is injectable for deterministic tests (default: a fresh, OS-seeded
    :class:`random.Random`, so clients never retry in lock-step). ``budget`` defaults to a
    private :class:`RetryBudget` from the policy; pass the endpoint's shared one.
    """

    __slots__ = ("_budget", "_clock", "_policy", "_rng")

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        rng: random.Random | None = None,
        budget: RetryBudget | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._policy = policy if policy is not None else RetryPolicy()
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._budget = (
            budget
            if budget is not None
            else RetryBudget(
                self._policy.budget_ratio, self._policy.budget_min_retries_per_second, clock=clock
            )
        )

    @property
    def policy(self) -> RetryPolicy:
        """The policy in force."""
        return self._policy

    @property
    def budget(self) -> RetryBudget:
        """The retry budget this retrier spends from."""
        return self._budget

    def note_request(self) -> None:
        """Count one first attempt toward the budget (``run`` does this itself)."""
        self._budget.pending += 1

    def backoff(self, attempt: int, previous: float) -> float:
        """The jittered backoff before retry number ``attempt`` (0-based)."""
        p = self._policy
        base = min(p.max_backoff, p.initial_backoff * p.multiplier**attempt)
        if p.jitter == "none":
            return base
        if p.jitter == "full":
            return self._rng.uniform(0.0, base)
        if p.jitter == "equal":
            return base / 2 + self._rng.uniform(0.0, base / 2)
        # decorrelated (AWS): grows from the previous sleep, not the attempt number
        prev = previous if previous > 0 else p.initial_backoff
        return min(
            p.max_backoff, self._rng.uniform(p.initial_backoff, max(p.initial_backoff, prev * 3))
        )

    def max_retries_for(self, exc: BaseException) -> int:
        """The retry cap for this error: the most specific ``per_error`` entry, else the
        policy's ``max_retries``."""
        per_error = self._policy.per_error
        if per_error:
            for cls in type(exc).__mro__:
                if cls.__name__ in per_error:
                    return per_error[cls.__name__]
        return self._policy.max_retries

    def next_delay(
        self, exc: BaseException, *, attempt: int, started_at: float, previous: float = 0.0
    ) -> RetryDecision:
        """Decide whether the failed attempt number ``attempt`` (0 = first) is retried.

        Order: never cancellation or non-errors; never ``QuotaExhausted`` or a local
        ``LocalRateLimited`` (it already waited ``max_wait``); the error's
        ``retryable`` (which reflects ``x-should-retry`` unless ``respect_should_retry`` is
        off); the per-error cap; the server's wait (``retry-after-ms`` > ``Retry-After``,
        failing fast beyond ``max_server_wait``) or the jittered backoff; the overall deadline
        (a wait that would overrun it is not taken); finally the retry budget.
        """
        p = self._policy
        if not isinstance(exc, Exception):
            return RetryDecision(False, 0.0, "not an error")
        if isinstance(exc, QuotaExhausted):
            return RetryDecision(False, 0.0, "quota exhausted")
        if isinstance(exc, LocalRateLimited):
            # The call already waited max_wait on this endpoint's own limiter.
            return RetryDecision(False, 0.0, "local rate limit: max_wait spent")
        if isinstance(exc, RakkaError):
            retryable = exc.retryable if p.respect_should_retry else type(exc).retryable
        else:
            retryable = False
        if not retryable:
            return RetryDecision(False, 0.0, "not retryable")
        if attempt >= self.max_retries_for(exc):
            return RetryDecision(False, 0.0, "retries exhausted")
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            if hint > p.max_server_wait:
                return RetryDecision(False, 0.0, "server wait exceeds max_server_wait")
            # A little extra on top of the server's wait spreads clients that got the same hint.
            delay = float(hint) * (1.0 + self._rng.uniform(0.0, 0.1))
        else:
            delay = self.backoff(attempt, previous)
        if p.deadline is not None:
            remaining = started_at + p.deadline - self._clock()
            if delay >= remaining:
                return RetryDecision(False, 0.0, "deadline")
        if not self._budget.try_spend():
            return RetryDecision(False, 0.0, "retry budget exhausted")
        return RetryDecision(True, delay, "retry")

    async def run(self, fn: Callable[[*Ts], Awaitable[T]], /, *args: *Ts) -> T:
        """Await ``fn(*args)``, retrying per the policy; the last error propagates unchanged.

        Cancellation is never retried. With a policy ``deadline`` the whole call (attempts and
        waits) is bounded by it and overrunning raises :class:`DeadlineExceeded`
        (``phase="total"``).
        """
        self._budget.pending += 1
        deadline = self._policy.deadline
        if deadline is None:
            try:
                return await fn(*args)
            except Exception as exc:
                failure = exc
            return await self._retry(fn, args, failure, 0.0)
        started = self._clock()
        with trio.move_on_at(started + deadline):
            try:
                return await fn(*args)
            except Exception as exc:
                failure = exc
            return await self._retry(fn, args, failure, started)
        raise DeadlineExceeded(f"retry deadline of {deadline:g}s exceeded", phase="total")

    async def _retry(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        args: tuple[*Ts],
        failure: Exception,
        started: float,
    ) -> T:
        attempt, previous = 0, 0.0
        while True:
            decision = self.next_delay(
                failure, attempt=attempt, started_at=started, previous=previous
            )
            if not decision.retry:
                raise failure
            await trio.sleep(decision.delay)
            attempt, previous = attempt + 1, decision.delay
            try:
                return await fn(*args)
            except Exception as exc:
                failure = exc
