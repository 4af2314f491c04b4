"""The public per-endpoint limiter handle."""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from .._config import RateLimits
from .._credentials import Secret
from .._errors import LocalRateLimited, RateLimitExceeded, UnknownEndpoint
from ._cost import ONE_REQUEST, Cost, model_family
from ._gcra import KeySpec
from ._key import Key
from ._reservation import Reservation
from ._stats import LimiterStatistics

if TYPE_CHECKING:
    from types import TracebackType

    from ._registry import LimiterRegistry

_UNSAFE = re.compile(r"[^a-z0-9.\-:\[\]_]")


def server_identity(base_url: str) -> str:
    """``host[:port]`` of a base URL, lowercase and safe in a key name: two servers that share
    an API key and a model never share a budget or a 429 pause."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    server = f"{host}:{port}" if port is not None else host
    return _UNSAFE.sub("_", server)[:100] or "default"


class AdmissionWouldWait(trio.WouldBlock):
    """:class:`trio.WouldBlock` from :meth:`LimiterHandle.acquire_nowait`: ``wait`` is the
    seconds the admission needs (an estimate, behind anyone waiting; ``math.inf`` when no time
    is known)."""

    def __init__(self, key: str, wait: float) -> None:
        super().__init__(f"limit key {key} needs {wait:.3f}s")
        self.key = key
        self.wait = wait


class ReservationRequest:
    """What :meth:`LimiterHandle.reserve` returns: ``async with`` it (admits on entry,
    releases on exit) or ``await`` it for the :class:`Reservation`."""

    __slots__ = ("_cost", "_handle", "_max_wait", "_model", "_reservation")

    def __init__(
        self, handle: LimiterHandle, cost: Cost, model: str | None, max_wait: float | None
    ) -> None:
        self._handle = handle
        self._cost = cost
        self._model = model
        self._max_wait = max_wait
        self._reservation: Reservation | None = None

    def __await__(self) -> Generator[Any, None, Reservation]:
        return self._handle._reserve(self._cost, self._model, self._max_wait).__await__()

    async def __aenter__(self) -> Reservation:
        if self._reservation is not None:
            raise RuntimeError("a reservation request can be entered only once")
        self._reservation = await self._handle._reserve(self._cost, self._model, self._max_wait)
        return self._reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reservation is not None:
            self._reservation._exit(exc)


# --- the public handle --------------------------------------------------------------------------


class LimiterHandle:
    """The rate limiter of one endpoint; get it with :meth:`Supervisor.limiter`.

    See docs/rate-limiting.md for the modes and the bounds they keep.

    Budget is kept per key ``(provider, server, api-key fingerprint, model family)``: calls
    pass the request's ``model`` and :meth:`bind_credential` tells the handle which key the
    endpoint currently uses, so endpoints sharing a server and an API key share its budget.

    - :meth:`acquire_nowait` (synchronous, never waits) takes a cost or raises
      :class:`trio.WouldBlock`; :meth:`wait_estimate` says how long an admission would wait
      without taking anything;
    - :meth:`acquire` waits in line (FIFO per key) for the rate budget;
    - :meth:`reserve` waits for the rate budget *and* a concurrency permit and gives a
      :class:`Reservation` to settle with the real usage (``async with limiter.reserve(...)``);
    - :meth:`observe_headers` / :meth:`observe_rate_limited` feed provider responses back.

    Waits are bounded by ``RateLimits.max_wait``; past it a call raises
    :class:`~rakka_trio.LocalRateLimited`.
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
        server: str = "default",
    ) -> None:
        self._endpoint = endpoint
        self._provider = provider
        self._server = server
        self._limits = limits
        self._spec = KeySpec.from_limits(limits)
        self._registry = registry
        self._default_model = default_model
        self._fingerprint = fingerprint or f"endpoint-{endpoint}"
        self._max_wait = math.inf if limits.max_wait is None else limits.max_wait
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
        the key they came from; the old keys are dropped (a shared key leaves the fleet) as
        soon as nothing is in flight on them, unless another endpoint still uses them.
        """
        fingerprint = secret.fingerprint
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            old = self._used
            self._used = {}
            self._keys.clear()
            self._default = None
            for key in old.values():
                self._registry.retire_key(key)

    def key(self, model: str | None = None) -> str:
        """The key label (``provider:server:fingerprint:family``) used for ``model``."""
        return self._key(model).label

    def _key(self, model: str | None) -> Key:
        key = self._keys.get(model)
        if key is None or key.closed:
            if self._closed:
                raise UnknownEndpoint(self._endpoint)
            family = model_family(model or self._default_model)
            label = f"{self._provider}:{self._server}:{self._fingerprint}:{family}"
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
        return the seconds it would have to wait (always > 0; ``math.inf`` when no time is
        known, e.g. behind a call waiting for a concurrency permit).

        Deprecated in favour of :meth:`acquire_nowait` (a falsy ``0.0`` meaning success is easy
        to misread). Never awaits; concurrency permits are not taken (use :meth:`reserve`).
        Raises :class:`RateLimitExceeded` if the cost exceeds a burst (it could never be
        admitted), and :class:`LimiterUnavailable` when shared limits cannot be checked under
        ``fail_closed``. In ``strict`` mode every admission is a Redis call, so this raises
        :class:`TypeError` (use ``await acquire(cost, max_wait=0)``).
        """
        key = self._default if model is None else self._keys.get(model)
        if key is None or key.closed:
            key = self._key(model)
        return key.try_acquire(cost)

    def acquire_nowait(self, cost: Cost = ONE_REQUEST, *, model: str | None = None) -> None:
        """Take ``cost`` from the rate limits now, or raise :class:`trio.WouldBlock` and take
        nothing (its ``wait`` attribute is the seconds needed; :meth:`wait_estimate` gives the
        same without trying). Never awaits; errors as for :meth:`try_acquire`."""
        key = self._default if model is None else self._keys.get(model)
        if key is None or key.closed:
            key = self._key(model)
        wait = key.try_acquire(cost)
        if wait:
            raise AdmissionWouldWait(key.label, wait)

    def wait_estimate(self, cost: Cost | None = None, *, model: str | None = None) -> float:
        """Seconds an admission of ``cost`` (default: one request) would wait now, taking
        nothing and never raising: ``0.0`` when it would be admitted at once, ``math.inf``
        when it can never fit, would be refused, or needs a concurrency permit none of which
        is free. Includes a 429 pause and the line ahead; a permit is counted when
        ``max_concurrent`` is set (as :meth:`reserve` takes one). Use it to skip an endpoint
        that cannot serve now."""
        if self._closed:
            return math.inf
        try:
            key = self._key(model)
        except UnknownEndpoint:
            return math.inf
        v = (cost or ONE_REQUEST)._v
        return key.wait_needed(v, key.spec.max_concurrent is not None, key._clock())

    async def acquire(
        self,
        cost: Cost = ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float | None = None,
    ) -> None:
        """Wait in line (FIFO per key) until ``cost`` is taken from the rate limits.

        A waiter that is cancelled takes nothing. If the wait would exceed ``max_wait``
        seconds (default ``RateLimits.max_wait``), raises :class:`LocalRateLimited` (with the
        ``wait`` needed) — at once when that is known up front.

        Checkpoints: cancellation is always checked on entry (a cancelled caller raises
        :class:`trio.Cancelled` and takes nothing). An admission that does not wait (nobody in
        line, budget there) returns without yielding to the scheduler, except every 32nd on
        a key; one that waits in line is a full checkpoint. See docs/rate-limiting.md.
        """
        key = self._default if model is None else self._keys.get(model)
        if key is None or key.closed:
            key = self._key(model)
        try:
            await key.acquire(cost._v, False, self._max_wait if max_wait is None else max_wait)
        except RateLimitExceeded as exc:
            raise self._local(exc) from None

    def reserve(
        self,
        cost: Cost = ONE_REQUEST,
        *,
        model: str | None = None,
        max_wait: float | None = None,
    ) -> ReservationRequest:
        """Wait in line for the rate budget of the estimate ``cost`` and, if ``max_concurrent``
        is set, a concurrency permit: ``async with limiter.reserve(cost) as r:`` admits on
        entry and releases on exit (refunding if the body fails before ``r.mark_sent()``);
        ``r = await limiter.reserve(cost)`` gives the :class:`Reservation` to manage.

        Cancellation while waiting takes nothing. ``max_wait`` and checkpoints as for
        :meth:`acquire`.
        """
        return ReservationRequest(self, cost, model, max_wait)

    async def _reserve(self, cost: Cost, model: str | None, max_wait: float | None) -> Reservation:
        key = self._default if model is None else self._keys.get(model)
        if key is None or key.closed:
            key = self._key(model)
        permit = key.spec.max_concurrent is not None
        try:
            await key.acquire(cost._v, permit, self._max_wait if max_wait is None else max_wait)
        except RateLimitExceeded as exc:
            raise self._local(exc) from None
        return Reservation(key, cost, permit)

    def _local(self, exc: RateLimitExceeded) -> RateLimitExceeded:
        """A refusal to wait as a :class:`LocalRateLimited` naming this endpoint; a cost that
        can never fit stays a plain :class:`RateLimitExceeded`."""
        if math.isinf(exc.wait) or isinstance(exc, LocalRateLimited):
            return exc
        return LocalRateLimited(
            f"the local rate limiter refused: {exc.message}",
            key=exc.key,
            wait=exc.wait,
            provider=self._provider,
            endpoint=self._endpoint,
        )

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
        limit; otherwise 1 s. Capped at ``max_pause`` (0: no pause). Returns the end of the
        pause (Trio clock; now when there is none). Shared keys spread the pause to every node
        through Redis. A no-op when ``adaptive`` is off.
        """
        if not self._limits.adaptive:
            return trio.current_time()
        return self._key(model).observe_rate_limited(retry_after, headers, self._endpoint)

    def statistics(self) -> LimiterStatistics:
        """An immutable snapshot of every key this endpoint uses."""
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
