"""The public per-endpoint limiter handle."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._config import RateLimits
from .._credentials import Secret
from .._errors import (
    UnknownEndpoint,
)
from ._cost import ONE_REQUEST, Cost, model_family
from ._gcra import KeySpec
from ._key import Key
from ._reservation import Reservation
from ._stats import LimiterStatistics

if TYPE_CHECKING:
    from ._registry import LimiterRegistry


# --- the public handle --------------------------------------------------------------------------


class LimiterHandle:
    """The rate limiter of one endpoint; get it with :meth:`Supervisor.limiter`.

    See docs/rate-limiting.md for the modes and the bounds they keep.

    Budget is kept per key ``(provider, api-key fingerprint, model family)``: calls pass the
    request's ``model`` and :meth:`bind_credential` tells the handle which key the endpoint
    currently uses, so endpoints sharing an API key share its budget.

    - :meth:`try_acquire` (synchronous, never waits) takes a cost or says how long it would wait;
    - :meth:`acquire` waits in line (FIFO per key) for the rate budget;
    - :meth:`reserve` waits for the rate budget *and* a concurrency permit and returns a
      :class:`Reservation` to settle with the real usage;
    - :meth:`observe_headers` / :meth:`observe_rate_limited` feed provider responses back.
    """

    def __init__(
        self,
        endpoint: str,
        provider: str,
        limits: RateLimits,
        registry: LimiterRegistry,
        *,
        default_model: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._provider = provider
        self._limits = limits
        self._spec = KeySpec.from_limits(limits)
        self._registry = registry
        self._default_model = default_model
        self._fingerprint = fingerprint or f"endpoint-{endpoint}"
        self._keys: dict[str | None, Key] = {}  # by model name as passed (None: default)
        self._default: Key | None = None  # _keys[None], read without a dict lookup
        self._used: dict[str, Key] = {}  # by label, for statistics and release
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint this limiter belongs to."""
        return self._endpoint

    @property
    def limits(self) -> RateLimits:
        """The configured limits."""
        return self._limits

    @property
    def mode(self) -> str:
        """``local``, ``approximate`` or ``strict``."""
        return self._limits.mode

    @property
    def fingerprint(self) -> str:
        """The credential fingerprint in the current key (a placeholder until bound)."""
        return self._fingerprint

    def bind_credential(self, secret: Secret) -> None:
        """Use ``secret``'s key from now on (call after resolving or rotating credentials).

        Only its :attr:`Secret.fingerprint` is kept. Reservations already taken settle against
        the key they came from.
        """
        fingerprint = secret.fingerprint
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self._keys.clear()
            self._default = None

    def key(self, model: str | None = None) -> str:
        """The key label (``provider:fingerprint:family``) used for ``model``."""
        return self._key(model).label

    def _key(self, model: str | None) -> Key:
        key = self._keys.get(model)
        if key is None or key.closed:
            if self._closed:
                raise UnknownEndpoint(self._endpoint)
            family = model_family(model or self._default_model)
            label = f"{self._provider}:{self._fingerprint}:{family}"
            key = self._used.get(label)
            if key is None or key.closed:
                key = self._registry.key_for(label, self._spec)
                self._used[label] = key
            self._keys[model] = key
            if model is None:
                self._default = key
        return key

    def try_acquire(self, cost: Cost = ONE_REQUEST, *, model: str | None = None) -> float:
        """Take ``cost`` from the rate limits now and return ``0.0``, or take nothing and
        return the seconds it would have to wait (an estimate, behind anyone already waiting).

        Never awaits. Concurrency permits are not involved (use :meth:`reserve`). Raises
        :class:`RateLimitExceeded` if the cost exceeds a burst (it could never be admitted), and
        :class:`LimiterUnavailable` when shared limits cannot be checked under ``fail_closed``.
        In ``strict`` mode every admission is a Redis call, so use
        ``await acquire(cost, max_wait=0)`` instead (this raises :class:`TypeError`).
        """
        # Keys cached here are open: closing the handle clears the cache.
        key = self._default if model is None else self._keys.get(model)
        if key is None:
            key = self._key(model)
        return key.try_acquire(cost)

    def wait_estimate(self, cost: Cost | None = None, *, model: str | None = None) -> float:
        """Seconds an admission of ``cost`` (default: one request) would wait now; takes
        nothing and never awaits.

        ``0.0`` means it would be admitted at once; a 429 pause, a short budget and anyone
        already in line make it longer; ``math.inf`` means never (the cost exceeds a burst)
        or not until a concurrency permit is returned. Deployments use it to skip an
        endpoint that cannot serve right now.
        """
        key = self._default if model is None else self._keys.get(model)
        if key is None:
            key = self._key(model)
        return key.wait_estimate((cost if cost is not None else ONE_REQUEST)._v)

    async def acquire(
        self,
        cost: Cost = ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float = math.inf,
    ) -> None:
        """Wait in line (FIFO per key) until ``cost`` is taken from the rate limits.

        A waiter that is cancelled takes nothing. If the wait would exceed ``max_wait``
        seconds, raises :class:`RateLimitExceeded` (with the ``wait`` needed) — at once when
        that is known up front. Always a Trio checkpoint.
        """
        await self._key(model).acquire(cost._v, False, max_wait)

    async def reserve(
        self,
        cost: Cost = ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float = math.inf,
    ) -> Reservation:
        """Wait in line for the rate budget of the estimate ``cost`` and, if ``max_concurrent``
        is set, a concurrency permit; return the :class:`Reservation`.

        Cancellation while waiting takes nothing. ``max_wait`` as for :meth:`acquire`.
        """
        key = self._key(model)
        permit = key.spec.max_concurrent is not None
        await key.acquire(cost._v, permit, max_wait)
        return Reservation(key, cost, permit)

    def observe_headers(self, headers: Mapping[str, str], *, model: str | None = None) -> None:
        """Feed a provider response's rate-limit headers back (any status).

        Reads OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and Anthropic
        ``anthropic-ratelimit-*``: a lower provider limit lowers the effective limit (never
        above the configured one), and each bucket is clamped down to ``remaining``. Only
        configured limits adapt. A no-op when ``adaptive`` is off.
        """
        if not self._limits.adaptive:
            return
        self._key(model).observe_headers(headers)

    def observe_rate_limited(
        self,
        retry_after: float | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> float:
        """Feed a provider 429 back: pause the whole key until its Retry-After.

        ``retry_after`` (seconds, e.g. :attr:`RateLimited.retry_after`) wins; otherwise
        ``headers`` give ``retry-after-ms``/``Retry-After`` or the reset time of an exhausted
        limit; otherwise 1 s. Capped at ``max_pause``. Returns the end of the pause (Trio
        clock). Shared keys spread the pause to every node through Redis.
        """
        return self._key(model).observe_rate_limited(retry_after, headers, self._endpoint)

    def statistics(self) -> LimiterStatistics:
        """An immutable snapshot of every key this endpoint used."""
        keys = tuple(k.statistics() for k in self._used.values() if not k.closed)
        backend = self._registry.backend
        healthy: bool | None = None
        if self._limits.mode != "local":
            healthy = backend is not None and backend.healthy
        return LimiterStatistics(
            endpoint=self._endpoint,
            mode=self._limits.mode,
            keys=keys,
            utilisation=max((k.utilisation for k in keys), default=0.0),
            waiters=sum(k.waiters for k in keys),
            in_flight=sum(k.in_flight for k in keys),
            paused=any(k.paused_until is not None for k in keys),
            fallback=any(k.fallback for k in keys),
            redis_healthy=healthy,
        )

    def _close(self) -> None:
        self._closed = True
        for key in self._used.values():
            self._registry.release_key(key)
        self._used.clear()
        self._keys.clear()
        self._default = None

    def __repr__(self) -> str:
        return f"<LimiterHandle {self._endpoint!r} {self._limits.mode}>"
