"""A reservation: an admitted estimate and a permit, settled to real usage."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import TracebackType

from ._cost import Cost, UsageLike
from ._key import Key

# --- reservations -----------------------------------------------------------------------------

_OPEN, _SETTLED, _REFUNDED = 0, 1, 2


class Reservation:
    """Budget taken for one call by :meth:`LimiterHandle.reserve`.

    ``cost`` is the estimate that was taken. After the call, :meth:`settle` with the provider's
    reported usage (the difference is refunded or owed); if the request was never sent,
    :meth:`refund` gives the whole estimate back. Only the first of ``settle``/``refund`` counts;
    later calls do nothing. :meth:`release` returns the concurrency permit (settling at the
    estimate if nothing was settled). As a context manager it releases on exit, and an exit by
    exception (cancellation included) before :meth:`mark_sent` refunds. A reservation dropped
    without release keeps its permit (the garbage collector only warns, with a
    :class:`ResourceWarning`): use it as a context manager.
    """

    __slots__ = ("__weakref__", "_key", "_permit", "_released", "_sent", "_state", "cost")

    def __init__(self, key: Key, cost: Cost, permit: bool) -> None:
        self._key = key
        self.cost = cost
        self._permit = permit
        self._state = _OPEN
        self._released = False
        self._sent = False
        key.reserved += 1  # the key is not dropped while a reservation is open

    @property
    def key(self) -> str:
        """The limit key (``provider:server:fingerprint:family``) the budget came from."""
        return self._key.label

    @property
    def settled(self) -> bool:
        """True once :meth:`settle`, :meth:`refund` or :meth:`release` fixed the spend."""
        return self._state != _OPEN

    @property
    def released(self) -> bool:
        """True once the concurrency permit (if any) was returned."""
        return self._released

    @property
    def sent(self) -> bool:
        """True once :meth:`mark_sent` was called."""
        return self._sent

    def mark_sent(self) -> None:
        """Record that the request went out: from now on an error exit keeps the spend."""
        self._sent = True

    def settle(self, actual: Cost | UsageLike | None = None) -> None:
        """Correct the spend to ``actual`` — a :class:`Cost`, or the provider's reported
        :class:`Usage` — or keep the estimate (``None``). Only the first settle or refund
        counts."""
        if self._state != _OPEN:
            return
        self._state = _SETTLED
        if actual is None:
            return
        if not isinstance(actual, Cost):
            actual = Cost.from_usage(actual, requests=self.cost.requests)
        est = self.cost._v
        act = actual._v
        delta = [float(act[d] - est[d]) for d in range(4)]
        if any(delta):
            self._key.adjust(delta)

    def refund(self) -> None:
        """Give the whole estimate back (the request was never sent). Idempotent; does nothing
        after :meth:`settle`."""
        if self._state != _OPEN:
            return
        self._state = _REFUNDED
        est = self.cost._v
        self._key.adjust([-float(est[d]) for d in range(4)])

    def release(self) -> None:
        """Return the concurrency permit; the estimate stands if nothing was settled."""
        if self._released:
            return
        self._released = True
        self._key.reserved -= 1
        if self._state == _OPEN:
            self._state = _SETTLED
        if self._permit:
            self._key.release_permit()

    def _exit(self, exc: BaseException | None) -> None:
        if exc is not None and not self._sent:
            self.refund()
        self.release()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Only warn: a finaliser runs wherever the garbage collector does (another thread,
        # after the run), where waking the limiter's waiters is unsafe.
        if getattr(self, "_permit", False) and not getattr(self, "_released", True):
            _warn(
                f"{self!r} was garbage-collected without release(): its concurrency permit "
                "is lost (use `async with`)",
                ResourceWarning,
                source=self,
            )

    def __repr__(self) -> str:
        state = ("open", "settled", "refunded")[self._state]
        return f"<Reservation {self._key.label} {self.cost!r} {state}>"
