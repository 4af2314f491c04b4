"""``mode="strict"``: one atomic Lua call per admission."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._errors import LimiterUnavailable, RateLimitExceeded
from ._cost import Vector
from ._gcra import KeySpec
from ._redis_scripts import MIN_SYNC_GAP
from ._redis_shared import SharedKey
from ._registry import LimiterRegistry

if TYPE_CHECKING:
    from ._redis_backend import RedisBackend


class StrictKey(SharedKey):
    """A key admitting through one atomic Redis call each time (mode ``strict``)."""

    mode = "strict"

    def __init__(
        self,
        label: str,
        spec: KeySpec,
        registry: LimiterRegistry,
        clock: Callable[[], float],
        offset: float,
        backend: RedisBackend,
    ) -> None:
        super().__init__(label, spec, registry, clock, offset, backend)
        self.pending_adjust = [0.0, 0.0, 0.0, 0.0]
        self._admit_args: tuple[list[int], bytes, struct.Struct, float, bytes] | None = None
        # Permits, against Redis's monotone per-node totals granted (g) and released (r):
        self.known_grants = 0  # grants this node was told about
        self.released = 0  # releases reported (or being reported)
        self.unknown_released = 0  # grants it never heard of (cancelled mid-call), released
        self.pending_grants = 0  # admissions asking Redis for a permit, not yet answered
        self.spares = 0  # permits held in Redis, free here: reused before the next sync
        self.local_permits = 0  # permits in use that Redis never granted (failure policy)

    def try_acquire(self, cost: Any) -> float:
        raise TypeError(
            f"limit key {self.label} is strict: every admission is a Redis call, so use "
            "`await limiter.acquire(cost, max_wait=0)` instead of acquire_nowait()/try_acquire()"
        )

    async def acquire(self, v: Vector, permit: bool, max_wait: float) -> None:
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            raise LimiterUnavailable(f"limit key {self.label} is closed", key=self.label)
        now = self._clock()
        self.check_fits(v)
        if not self._waiters and now >= self._paused_until:
            wait = await self._admit_async(v, permit, now)
            if not wait:
                self.admitted += 1
                if permit:
                    self._in_flight += 1
                return
            if wait > max_wait and math.isfinite(wait):
                self.rejected += 1
                raise RateLimitExceeded(
                    f"limit key {self.label} needs {wait:.3f}s, more than max_wait {max_wait:g}s",
                    key=self.label,
                    wait=wait,
                )
            await self._wait_in_line(v, permit, max_wait, first_wait=wait)
            return
        await self._wait_in_line(v, permit, max_wait)

    def _admit(self, v: Vector, permit: bool, now: float) -> float:
        raise AssertionError("strict keys admit through _admit_async")  # pragma: no cover

    async def _admit_async(self, v: Vector, permit: bool, now: float) -> float:
        backend = self.backend
        if not backend.healthy:
            return self._policy_admit(v, permit, now)
        cap = self.spec.max_concurrent if permit else None
        # A permit this node released is still counted in Redis until the next sync: reuse
        # it (a rates-only admission) instead of asking for another.
        spare = cap is not None and self.spares > 0
        if spare:
            self.spares -= 1
        elif cap is not None:
            self.pending_grants += 1
        fresh = not self.seen
        ask = cap is not None and not spare
        generation = self.generation
        args = self.admit_args(v, fresh, cap if ask and cap is not None else 0)
        try:
            reply = await backend.call(
                self, "admit", args, self.redis_keys if ask else self.state_key
            )
        except trio.Cancelled:
            # Cancelled while Redis decided: whether it admitted is unknown. Assume it did
            # not (never over-admit): at worst this cost is spent unused. A permit it may
            # have granted is found by the next sync (granted total > known) and released.
            if spare:
                self.spares += 1
            raise
        finally:
            if ask:
                self.pending_grants -= 1
        if reply is None:
            if spare:
                self.spares += 1
            return self._policy_admit(v, permit, self._clock())
        packed = int(reply)
        admitted, created, wait_ms = packed & 1, bool(packed >> 1 & 1), packed >> 2
        if created:
            # Report a loss now; the next heartbeat learns the new epoch without a 2nd report.
            self.observe_epoch(None, True, fresh)
        self.seen = True
        if not admitted:
            if spare:
                self.spares += 1
            if wait_ms < 0:
                # No permit free anywhere: poll, since another node's release can't wake us.
                self.fleet_permits = self.spec.max_concurrent or 0
                return 0.05
            return wait_ms / 1000.0
        if ask:
            if cap is not None:  # one was free just now: not full (the next sync says more)
                self.fleet_permits = min(self.fleet_permits, cap - 1)
            if generation == self.generation:
                self.known_grants += 1
            else:
                # Granted to the member this node was before it re-registered: that member's
                # permits are freed when it expires, so this one ends locally.
                self.local_permits += 1
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            self._give_back(v, cap is not None)
            raise
        return 0.0

    def admit_args(self, v: Vector, fresh: bool, max_conc: int) -> list[bytes]:
        """ADMIT's arguments; the unchanging parts are encoded once per limits change."""
        cached = self._admit_args
        if cached is None or cached[0] != self.effective or cached[1] != self.member.encode():
            dims = self.spec.dims
            limits = struct.pack(
                f"<{3 * len(dims)}d",
                *[x for d in dims for x in (d + 1, self.effective[d], self.effective_burst(d))],
            )
            cached = (
                list(self.effective),
                self.member.encode(),
                struct.Struct(f"<{4 + len(dims)}d"),
                float(round(self.spec.limits_config.node_ttl * 1000.0)),
                limits,
            )
            self._admit_args = cached
        _, node, head, ttl, limits = cached
        dims = self.spec.dims
        packed = head.pack(ttl, fresh, max_conc, len(dims), *[v[d] for d in dims]) + limits
        return [node, packed]

    def retighten(self, spec: KeySpec) -> None:
        super().retighten(spec)
        self._admit_args = None
        self._bursts_cache = None
        self.fallback_bucket = None

    def _give_back(self, v: Vector, permit: bool) -> None:
        for d in self.spec.dims:
            self.pending_adjust[d] -= v[d]
        if permit:
            self.spares += 1
        self.signal()

    def _policy_admit(self, v: Vector, permit: bool, now: float) -> float:
        wait = super()._policy_admit(v, permit, now)
        if not wait and permit and self.spec.max_concurrent is not None:
            self.local_permits += 1
        return wait

    def state_lost(self) -> None:
        # Redis forgot every grant: start the totals afresh. Permits in use now were granted
        # by the lost state; they end locally (a transient excess of at most what was in
        # flight, gone when those calls finish).
        self.local_permits = self._in_flight
        self.known_grants = self.released = self.unknown_released = self.spares = 0

    def _permit_wait(self) -> float:
        cap = self.spec.max_concurrent
        if cap is None:
            return 0.0
        if self.spares > 0:
            return 0.0  # released here, still counted in Redis: reusable at once
        if self._in_flight >= cap or self.fleet_permits >= cap:
            return math.inf
        return 0.0

    def _estimate(self, v: Vector, now: float, ahead: list[float] | None) -> float:
        wait = 0.0
        for d in self.spec.dims:
            deficit = v[d] + (ahead[d] if ahead else 0.0) - self.remote_levels[d]
            if deficit > 0:
                wait = max(wait, deficit * 60.0 / self.effective[d])
        return wait

    def _adjust(self, delta: Vector | list[float], now: float) -> None:
        for d in self.spec.dims:
            self.pending_adjust[d] += delta[d]
        self.signal()

    def _levels(self, now: float) -> list[float]:
        return [self.remote_levels[d] for d in self.spec.dims]

    def _on_release(self) -> None:
        if self.local_permits > 0:
            self.local_permits -= 1
        else:
            self.spares += 1
            self.signal()  # released to Redis at the next sync unless reused before

    def lease_args(self, now: float, leave: bool) -> tuple[list[Any], Any]:
        # Settlements, refunds and released permits move into totals for good: a call that
        # fails re-sends them, and one that ran after all is not applied twice.
        adjust = self.pending_adjust
        self.pending_adjust = [0.0, 0.0, 0.0, 0.0]
        for d in self.spec.dims:
            self.given[d] += max(-adjust[d], 0.0)
            self.charged[d] += max(adjust[d], 0.0)
        self.charge_unsynced()
        clamps = self.pending_clamp
        self.pending_clamp = {}
        self.released += self.spares  # never reused once reported: Redis may count them
        self.spares = 0
        args = self.common_args(now, leave, -1, self.released + self.unknown_released)
        args += self.dim_args([0.0, 0.0, 0.0, 0.0], dict(clamps))
        return args, clamps

    def lease_done(self, reply: Sequence[Any], pending: Any, now: float) -> None:
        self.common_done(reply, now)
        if self.spec.max_concurrent is not None:
            # Grants Redis made that this node never heard of (an admission cancelled while
            # in flight): release them. Answers still on their way are pending, not unknown.
            unknown = int(reply[13]) - self.known_grants - self.pending_grants
            if unknown > self.unknown_released:
                self.unknown_released = unknown
                self.signal()
        self.not_before = now + MIN_SYNC_GAP
        self.wake_head()

    def lease_failed(self, pending: Any) -> None:
        self.common_failed()
        for d, remaining in pending.items():
            self.pending_clamp.setdefault(d, remaining)
