"""``mode="approximate"``: escrow leases spent at memory speed."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._cost import Vector
from ._gcra import KeySpec
from ._redis_scripts import CLAMP_URGENT, MIN_LEASE_ADMISSIONS, MIN_SYNC_GAP
from ._redis_shared import SharedKey
from ._registry import LimiterRegistry

if TYPE_CHECKING:
    from ._redis_backend import RedisBackend


class ApproximateKey(SharedKey):
    """A key spending leased escrow locally (mode ``approximate``)."""

    mode = "approximate"

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
        self.level = [0.0, 0.0, 0.0, 0.0]  # escrow: leased and not yet spent
        self.low = [0.0, 0.0, 0.0, 0.0]  # top up below this
        self.need = [0.0, 0.0, 0.0, 0.0]  # what the head of the line is missing
        self.spent = [0.0, 0.0, 0.0, 0.0]  # since the last sync: the demand measurement
        self.spent_admissions = 0
        self.rate = [0.0, 0.0, 0.0, 0.0]  # smoothed demand per second
        self.admission_rate = 0.0
        self.permit_waiting = False

    def _admit(self, v: Vector, permit: bool, now: float) -> float:
        if permit and self.spec.max_concurrent is not None and self._in_flight >= self.permits_held:
            if self.backend.healthy:
                self.permit_waiting = True
                self.signal()
                return math.inf
            return self._policy_admit(v, permit, now)
        level = self.level
        dims = self.spec.dims
        for d in dims:
            if level[d] < v[d]:
                break
        else:
            low = False
            for d in dims:
                level[d] -= v[d]
                self.spent[d] += v[d]
                if level[d] < self.low[d]:
                    low = True
            self.spent_admissions += 1
            if low:
                self.signal()
            return 0.0
        if not self.backend.healthy:
            return self._policy_admit(v, permit, now)
        for d in dims:
            self.need[d] = max(self.need[d], v[d] - level[d])
        self.signal()
        return self._lease_wait(v)

    def _lease_wait(self, v: Vector) -> float:
        return max(self._estimate(v, self._clock(), None), MIN_SYNC_GAP)

    def _estimate(self, v: Vector, now: float, ahead: list[float] | None) -> float:
        # An estimate: about one round trip when the shared bucket had room at the last sync,
        # otherwise the time this node's share of the refill needs to cover the deficit.
        wait = 0.0
        for d in self.spec.dims:
            deficit = v[d] + (ahead[d] if ahead else 0.0) - self.level[d]
            if deficit > 0:
                beyond = deficit - max(self.remote_levels[d], 0.0)
                share = self.effective[d] / 60.0 / max(1, self.members)
                wait = max(wait, beyond / share if beyond > 0 else MIN_SYNC_GAP)
        return wait

    def _adjust(self, delta: Vector | list[float], now: float) -> None:
        # Refunds go back to the escrow (they were leased); debts make it negative, and the
        # next leases repay them before anything else is admitted. Only debts count as
        # demand: the escrow must cover what admissions *take* (the estimates), so a refund
        # of an over-estimate does not shrink the next lease. (Counting it did: with a
        # 1,000-token estimate settled at 15, leases shrank to one admission's worth and
        # every admission waited for a round trip.)
        for d in self.spec.dims:
            self.level[d] -= delta[d]
            if delta[d] > 0:
                self.spent[d] += delta[d]
        if any(self.level[d] < self.low[d] for d in self.spec.dims):
            self.signal()

    def _levels(self, now: float) -> list[float]:
        # What this node can draw on: the shared bucket as of the last sync plus its own
        # escrow (other nodes' escrow counts as in use). The escrow alone is a small slice of
        # the burst by design and would read as "nearly exhausted" on an idle key.
        bursts = self._bursts()
        return [min(bursts[d], self.remote_levels[d] + self.level[d]) for d in self.spec.dims]

    def _clamp(self, dim: int, remaining: int, now: float) -> None:
        self.level[dim] = min(self.level[dim], float(remaining))
        # The provider's remaining covers our escrow too: the shared bucket may hold the
        # rest. Publish at once only when that lowers the bucket (as last seen, plus its
        # refill since) by a material amount; a smaller correction rides with the next sync.
        # Headers arrive with every response, and a sync per response would cost a round
        # trip per admission (P9).
        shared = float(remaining) - max(self.level[dim], 0.0)
        burst = self.effective_burst(dim)
        elapsed = max(0.0, now - self.last_sync)
        seen = min(burst, self.remote_levels[dim] + self.effective[dim] * elapsed / 60.0)
        if shared >= seen:
            return  # cannot lower the bucket
        # Responses race: keep the lowest remaining until it is sent (it soon is if urgent).
        remaining = min(remaining, self.pending_clamp.get(dim, remaining))
        if seen - shared > burst * CLAMP_URGENT or shared <= 0:
            super()._clamp(dim, remaining, now)
        else:
            self.pending_clamp[dim] = remaining

    def _refuses(self, v: Vector, now: float) -> bool:
        # Under fail_closed without Redis the escrow is still spent.
        return super()._refuses(v, now) and any(self.level[d] < v[d] for d in self.spec.dims)

    def _full(self, now: float) -> bool:
        # A negative escrow is a debt the next leases repay: leaving now would forget it.
        return all(self.level[d] >= 0 for d in self.spec.dims)

    def _permit_wait(self) -> float:
        if self._in_flight < self.permits_held:
            return 0.0
        cap = self.spec.max_concurrent
        if cap is not None and self.backend.healthy and self.fleet_permits < cap:
            return MIN_SYNC_GAP  # free elsewhere at the last sync: a lease away
        return math.inf

    def _on_release(self) -> None:
        if self.permit_waiting or self.permits_held > self._in_flight + 1:
            self.signal()

    def lease_args(self, now: float, leave: bool) -> tuple[list[Any], Any]:
        elapsed = max(now - self.last_sync, 1e-3)
        fresh = self.admission_rate == 0.0
        weight = min(1.0, elapsed / 2.0)  # ~2 s memory, whatever the sync pace
        for d in self.spec.dims:
            measured = self.spent[d] / elapsed
            self.rate[d] = measured if fresh else self.rate[d] + weight * (measured - self.rate[d])
            self.spent[d] = 0.0
        measured = self.spent_admissions / elapsed
        self.admission_rate = (
            measured if fresh else self.admission_rate + weight * (measured - self.admission_rate)
        )
        self.spent_admissions = 0
        horizon = self.spec.limits_config.lease_seconds
        if self.admission_rate > 0:
            horizon = min(max(horizon, MIN_LEASE_ADMISSIONS / self.admission_rate), 60.0)
        members = max(1, self.members)
        waiting = bool(self._waiters)
        gives = [0.0, 0.0, 0.0, 0.0]
        wants = [0.0, 0.0, 0.0, 0.0]
        for d in self.spec.dims:
            burst = self.effective_burst(d)
            target = min(self.rate[d] * horizon, burst / members)
            target = max(target, self.need[d] + self.level[d])  # the head's whole cost
            target = min(target, burst)
            self.low[d] = target / 2.0
            level = self.level[d]
            if leave:
                gives[d] = max(level, 0.0)
            elif level < target and (level <= self.low[d] or self.need[d] > 0):
                wants[d] = math.ceil(target - level)
            elif not waiting and level > 2.0 * target + 1.0:
                gives[d] = level - target
            # Moved out now and for good: the given total carries it until Redis took it.
            self.level[d] -= gives[d]
            self.given[d] += gives[d]
        self.charge_unsynced()
        clamps = self.pending_clamp
        self.pending_clamp = {}
        cap = self.spec.max_concurrent
        permits = 0
        if cap is not None:
            need = self._in_flight + sum(1 for w in self._waiters if w.permit)
            # A busy node keeps one spare permit (its next call needs no round trip), but only
            # while that leaves one free for the others: a spare held forever by an idle node
            # starved every other node of a small cap.
            others = max(0, self.fleet_permits - self.permits_held)
            spare = 1 if self.admission_rate > 0 and others + need + 2 <= cap else 0
            permits = 0 if leave else need + spare
            # Permits given back stop being usable now, not when Redis answers: callers
            # arriving meanwhile would use permits Redis is handing to other nodes.
            self.permits_held = min(self.permits_held, max(permits, self._in_flight))
        args = self.common_args(now, leave, permits)
        shared_clamps: dict[int, float] = {}
        for d, remaining in clamps.items():
            # The provider's remaining covers our escrow too: the shared part is the rest.
            shared_clamps[d] = max(0.0, remaining - max(self.level[d], 0.0))
        args += self.dim_args(wants, shared_clamps)
        self.need = [0.0, 0.0, 0.0, 0.0]
        self.permit_waiting = False
        return args, (clamps, wants)

    def lease_done(self, reply: Sequence[Any], pending: Any, now: float) -> None:
        _clamps, wants = pending
        grants = self.common_done(reply, now)
        partial = False
        for d in self.spec.dims:
            self.level[d] += grants[d]
            if grants[d] < wants[d]:
                partial = True
        # Pace the next top-up: a partial grant means the shared bucket is dry, so come back
        # when this node's share of the refill could cover it (never in lock-step with others).
        gap = MIN_SYNC_GAP
        if partial:
            longest = self.spec.limits_config.sync_interval
            for d in self.spec.dims:
                rate = self.effective[d] / 60.0
                # Come back before the shared bucket could fill up unclaimed.
                longest = min(longest, self.effective_burst(d) / rate / 2.0)
                missing = wants[d] - grants[d]
                if missing > 0:
                    # Not the whole top-up: come back once the share of the refill covers
                    # about 20 admissions (P9's batch), so waiters are not held up for a
                    # large lease when the bucket refills quickly.
                    if self.admission_rate > 0:
                        batch = MIN_LEASE_ADMISSIONS * self.rate[d] / self.admission_rate
                        missing = min(missing, max(batch, 1.0))
                    gap = max(gap, missing / (rate / max(1, self.members)))
            gap = min(gap, max(longest, MIN_SYNC_GAP))
        self.not_before = now + gap * random.uniform(0.8, 1.2)
        self.wake_head()

    def lease_failed(self, pending: Any) -> None:
        # Tokens given back stay given (the total is re-sent; Redis may have taken them
        # already), permits given back stay given, grants of a call that ran after all
        # arrive with the next answer's granted total.
        clamps, _wants = pending
        self.common_failed()
        for d, remaining in clamps.items():
            self.pending_clamp.setdefault(d, remaining)

    def state_lost(self) -> None:
        # Permits held by a lost state or a forgotten member are held no more: ask again.
        self.permits_held = 0

    def retighten(self, spec: KeySpec) -> None:
        super().retighten(spec)
        self._bursts_cache = None
        self.fallback_bucket = None
