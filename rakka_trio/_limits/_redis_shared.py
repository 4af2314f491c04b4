"""Shared rate limits through Redis (``coredis`` on Trio): approximate and strict modes.

Redis holds, per key, one token bucket per limit refilled by Redis's own clock (``TIME``), so
every node sees the same budget. Three Redis keys share one hash tag (cluster-safe):
``<prefix>{<label>}:s`` (levels, refill time, pause, epoch, permits in use), ``:n`` (live nodes,
scored by heartbeat expiry) and ``:c`` (each node's concurrency permits as monotone granted and
released totals, so heartbeats and admissions that cross in flight commute).

``approximate`` — escrow leases (bounded counter). A node *leases* tokens out of the shared
bucket and spends them locally at memory speed; a background task tops the escrow up before it
runs dry, sized to about ``lease_seconds`` of the node's measured demand (what admissions
take, i.e. estimates, not what they settle at; at least 20 admissions' worth, at most the
node's ``1/N`` share of the burst). Every token spent was first taken from the shared bucket,
so counted usage is never over-spent: the admitted total over any window ``T`` is at most
``burst + rate·T`` whatever the number of nodes. Tokens leased but not spent are returned when
demand drops or the node leaves, and lost (under-spent, never over-spent) if it crashes. The
hot path never awaits Redis.

``strict`` — one atomic Lua call per admission checks and takes every limit of the key (and a
concurrency permit) at once. Settlements, refunds and permit releases are batched into the
background sync, which also heartbeats the node's membership.

Failure handling: every call has ``redis_timeout``; a failure marks Redis unavailable (a
:class:`LimiterFallback` event) and each key follows ``redis_failure_policy`` — ``fail_closed``
refuses with :class:`LimiterUnavailable` (approximate keys still spend what they had leased),
``fail_open`` admits without limits, ``local_fallback`` admits within this node's share
(``1/N`` of each limit, ``N`` the last known number of live nodes). Spending done without Redis
is charged to the shared bucket once it is back (at most one burst), so the fleet re-converges.
A restart that lost the keys is detected (a new epoch: :class:`LimiterStateLost`); the state is
re-created empty — refilling from that moment — because the nodes may still hold leases of the
old state. Nodes that stop heartbeating for ``node_ttl`` seconds are dropped with their permits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._errors import LimiterUnavailable
from ._cost import Vector
from ._gcra import Gcra, KeySpec
from ._key import Key
from ._redis_scripts import KEY_PREFIX
from ._registry import LimiterRegistry
from ._stats import LimiterStateLost

if TYPE_CHECKING:
    from ._redis_backend import RedisBackend

log = logging.getLogger("rakka_trio.limiter")


def _policy(key: Key) -> str:
    return key.spec.limits_config.redis_failure_policy


class SharedKey(Key):
    """What approximate and strict keys share: Redis keys, membership, fallback, debts."""

    def __init__(
        self,
        label: str,
        spec: KeySpec,
        registry: LimiterRegistry,
        clock: Callable[[], float],
        offset: float,
        backend: RedisBackend,
    ) -> None:
        super().__init__(label, spec, registry, clock, offset)
        self.backend = backend
        self.redis_keys = [f"{KEY_PREFIX}{{{label}}}:{s}" for s in ("s", "n", "c")]
        self.state_key = self.redis_keys[:1]
        self._bursts_cache: tuple[list[int], list[float]] | None = None
        self.sync_wanted = trio.Event()
        self.not_before = 0.0  # key time
        self.last_sync = clock()
        self.epoch: str | None = None
        self.seen = False  # this node has seen the shared state (a later "created" = lost)
        self.lease_fresh = True  # the LEASE in flight was sent before the state was seen
        self.members = 1
        self.permits_held = 0
        self.unsynced = [0.0, 0.0, 0.0, 0.0]  # spent without Redis, charged when it is back
        self.pending_pause = -math.inf  # end (key time) of a pause of ours to publish
        self.adopting = False  # applying a pause read from Redis (not to publish again)
        self.pending_clamp: dict[int, int] = {}
        self.remote_levels = [0.0, 0.0, 0.0, 0.0]
        self.fallback_bucket: Gcra | None = None
        self.state_resets = 0
        self.round_trips = 0

    # -- helpers -----------------------------------------------------------------------------

    def signal(self) -> None:
        """Ask the background sync to run soon."""
        if not self.sync_wanted.is_set():
            self.sync_wanted.set()

    def effective_burst(self, d: int) -> float:
        """The burst of ``d``: configured, or scaled down with the limit once provider headers
        lowered it."""
        return self.spec.lowered_burst(d, self.effective[d])

    def _bursts(self) -> list[float]:
        # Read on every strict admission (the burst check): recomputed only when the
        # effective limits change.
        cached = self._bursts_cache
        if cached is None or cached[0] != self.effective:
            bursts = [self.effective_burst(d) if self.spec.limits[d] else 0.0 for d in range(4)]
            cached = (list(self.effective), bursts)
            self._bursts_cache = cached
        return cached[1]

    def dims_args(self) -> list[tuple[int, float]]:
        """``(L, B)`` per dimension as the scripts expect (0 for unlimited)."""
        return [
            (self.effective[d], self.effective_burst(d)) if self.spec.limits[d] else (0, 0.0)
            for d in range(4)
        ]

    def _fallback(self, now: float) -> Gcra:
        # This node's share of each limit while Redis is away; it starts empty so a failover
        # never adds a burst on top of what the node already held.
        bucket = self.fallback_bucket
        if bucket is None:
            n = max(1, self.members)
            limits = [self.effective[d] / n if self.spec.limits[d] else 0.0 for d in range(4)]
            bursts = [self.effective_burst(d) / n if self.spec.limits[d] else 0.0 for d in range(4)]
            bucket = Gcra(self.spec.dims, limits, bursts, now)
            for i in range(len(bucket.tat)):
                bucket.tat[i] = now + bucket.tau[i]
            self.fallback_bucket = bucket
        return bucket

    def _policy_admit(self, v: Vector, permit: bool, now: float) -> float:
        """Admit without Redis, as ``redis_failure_policy`` says."""
        policy = _policy(self)
        if policy == "fail_closed":
            raise LimiterUnavailable(
                f"shared limits for {self.label} are unavailable (Redis unreachable) and the "
                "policy is fail_closed",
                key=self.label,
            )
        cap = self.spec.max_concurrent
        if policy == "local_fallback":
            if permit and cap is not None:
                share = max(self.permits_held, math.ceil(cap / max(1, self.members)))
                if self._in_flight >= share:
                    return math.inf
            wait = self._fallback(now).take(v, now)
            if wait:
                return wait
        for d in self.spec.dims:
            self.unsynced[d] += v[d]
        return 0.0

    def _on_pause(self, until: float, now: float) -> None:
        if self.adopting:
            return  # a pause read from Redis is already shared: publishing it would renew it
        # The end, not the length: a sync delayed after the pause began publishes only what
        # is left of it.
        self.pending_pause = max(self.pending_pause, until)
        self.signal()

    def _clamp(self, dim: int, remaining: int, now: float) -> None:
        self.pending_clamp[dim] = remaining
        self.signal()

    def _lower_limit(self, dim: int, per_minute: int, now: float) -> None:
        self.fallback_bucket = None  # rebuilt with the new share when next needed
        self.wake_head()

    def close(self) -> None:
        super().close()
        self.signal()  # the sync loop sees ``closed``, gives everything back and ends

    def _extra_statistics(self) -> dict[str, Any]:
        return {
            "fallback": not self.backend.healthy,
            "members": self.members,
            "state_resets": self.state_resets,
            "redis_round_trips": self.round_trips,
        }

    def observe_epoch(self, epoch: str | None, created: bool, fresh: bool) -> None:
        """Compare the shared state with what this node knew when it sent the call (``fresh``:
        it had not seen it yet). Re-created although seen, or a different epoch, means Redis
        lost it (restart, eviction)."""
        changed = epoch is not None and self.epoch is not None and epoch != self.epoch
        if (created and not fresh) or changed:
            self.state_lost()
            self.state_resets += 1
            log.warning("limiter %s: Redis lost the shared state; re-created it", self.label)
            self.registry.publish(LimiterStateLost(at=trio.current_time(), key=self.label))
        self.epoch = epoch
        self.seen = True

    def state_lost(self) -> None:
        """Redis lost the shared state (strict keys reset their permit totals)."""

    def apply_pause(self, left_ms: int, now: float) -> None:
        """Adopt a pause another node published."""
        if left_ms > 0:
            until = now + left_ms / 1000.0
            if until > self._paused_until + 0.05:  # our own pause echoes back a little later
                self.adopting = True
                try:
                    self.pause(until, "shared", None, now)
                finally:
                    self.adopting = False

    # -- sync (run by the backend's task for this key) -----------------------------------------

    def lease_args(self, now: float, leave: bool) -> tuple[list[Any], Any]:
        """Arguments of one LEASE call and what to restore if it fails."""
        raise NotImplementedError

    def lease_done(self, reply: Sequence[Any], pending: Any, now: float) -> None:
        """Apply a LEASE reply."""
        raise NotImplementedError

    def lease_failed(self, pending: Any) -> None:
        """Undo what :meth:`lease_args` moved out."""
        raise NotImplementedError

    def common_args(
        self, now: float, leave: bool, permits_want: int, released: int = -1
    ) -> list[Any]:
        """The LEASE arguments before the per-dimension ones."""
        pause_ms = max(0.0, (self.pending_pause - now) * 1000.0)
        self.pending_pause = -math.inf
        cap = self.spec.max_concurrent
        ttl_ms = self.spec.limits_config.node_ttl * 1000.0
        self.lease_fresh = not self.seen
        return [
            self.backend.node_id,
            round(ttl_ms),
            1 if self.lease_fresh else 0,
            1 if leave else 0,
            round(pause_ms),
            cap or 0,
            permits_want if cap is not None else -1,
            released if cap is not None else -1,
        ]

    def common_done(self, reply: Sequence[Any], now: float) -> list[int]:
        """Apply the shared part of a LEASE reply; return the grants."""
        epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        self.observe_epoch(epoch, bool(int(reply[1])), self.lease_fresh)
        self.members = max(1, int(reply[2]))
        self.apply_pause(int(reply[3]), now)
        if self.spec.max_concurrent is not None:
            self.permits_held = int(reply[4])
        for d in range(4):
            self.remote_levels[d] = float(reply[9 + d])
        self.fallback_bucket = None
        self.last_sync = now
        return [int(reply[5 + d]) for d in range(4)]

    def charges(self) -> list[float]:
        """Spend without Redis to charge now (at most one burst per limit)."""
        out = [0.0, 0.0, 0.0, 0.0]
        for d in self.spec.dims:
            out[d] = min(self.unsynced[d], self.effective_burst(d))
            self.unsynced[d] = 0.0
        return out
