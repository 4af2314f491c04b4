"""Shared rate limits through Redis (``coredis`` on Trio): approximate and strict modes.

Redis holds, per key, one token bucket per limit refilled by Redis's own clock (``TIME``), so
every node sees the same budget. Its Redis keys share one hash tag (cluster-safe):
``<prefix>{<label>}:s`` (levels, refill time, pause, epoch, permits in use), ``:n`` (live nodes,
scored by heartbeat expiry), ``:c`` (each node's concurrency permits as monotone granted and
released totals, so heartbeats and admissions that cross in flight commute) and ``:L:<member>``
(each member's ledger, see "Stalls" below).

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
(``1/N`` of each limit, ``N`` the last known number of live nodes, or ``expected_nodes`` before
Redis ever answered). Spending done without Redis is charged to the shared bucket once it is
back (at most one burst per outage), so the fleet re-converges.

Stalls: a call that timed out may still run when Redis wakes. Syncs therefore carry a sequence
number and cumulative totals (given, charged, released, and grants returned as a total), and a
per-member ledger in Redis keeps what was applied, so nothing is applied twice and a call
overtaken by a newer one changes nothing. A member is ``node_id#incarnation``: a key re-created
later, or one whose node was silent for ``node_ttl`` (and may have been dropped), starts afresh.
A restart that lost the keys is detected (a new epoch: :class:`LimiterStateLost`); the state is
re-created empty — refilling from that moment — because the nodes may still hold leases of the
old state. Nodes that stop heartbeating for ``node_ttl`` seconds are dropped with their permits.
"""

from __future__ import annotations

import logging
import math
import secrets
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
        # This key object's identity in the fleet: the node id plus an incarnation, so that a
        # key re-created later (or after a silence long enough to be forgotten) never
        # inherits the permit totals or the ledger of an earlier one.
        self.member = ""
        self.lease_keys: list[str] = []
        self.generation = 0  # bumped with each new incarnation
        self.seq = 0  # LEASE sequence numbers of this incarnation
        self.confirmed_seq = 0  # the last one answered
        self.sent_at = 0.0  # key time the LEASE in flight was sent
        self.last_ok_sent: float | None = None  # ... and the last answered one
        self.given = [0.0, 0.0, 0.0, 0.0]  # totals given back / charged / granted (ledger)
        self.charged = [0.0, 0.0, 0.0, 0.0]
        self.received = [0.0, 0.0, 0.0, 0.0]
        self.new_incarnation()
        self._bursts_cache: tuple[list[int], list[float]] | None = None
        self.sync_wanted = trio.Event()
        self.not_before = 0.0  # key time
        self.last_sync = clock()
        self.epoch: str | None = None
        self.seen = False  # this node has seen the shared state (a later "created" = lost)
        self.lease_fresh = True  # the LEASE in flight was sent before the state was seen
        # Before Redis answered once: the fleet size the configuration expects (a fleet
        # started during an outage must not assume each node is alone).
        self.members = spec.limits_config.expected_nodes
        self.permits_held = 0
        self.fleet_permits = 0  # permits in use fleet-wide, as of the last sync
        self.unsynced = [0.0, 0.0, 0.0, 0.0]  # spent without Redis, charged when it is back
        self.outage_charged = [0.0, 0.0, 0.0, 0.0]  # ... so far in this outage (capped)
        self.pending_pause = -math.inf  # end (key time) of a pause of ours to publish
        self.sent_pause = -math.inf  # ... and of the one in the LEASE in flight
        self.adopting = False  # applying a pause read from Redis (not to publish again)
        self.pending_clamp: dict[int, int] = {}
        self.remote_levels = [0.0, 0.0, 0.0, 0.0]
        self.fallback_bucket: Gcra | None = None
        self.state_resets = 0
        self.round_trips = 0

    # -- helpers -----------------------------------------------------------------------------

    def new_incarnation(self) -> None:
        """Start afresh in the fleet under a new member id (fresh ledger and permit totals)."""
        self.member = f"{self.backend.node_id}#{secrets.token_hex(4)}"
        self.lease_keys = [*self.redis_keys, f"{KEY_PREFIX}{{{self.label}}}:L:{self.member}"]
        self.generation += 1
        self.seq = self.confirmed_seq = 0
        self.last_ok_sent = None
        self.given = [0.0, 0.0, 0.0, 0.0]
        self.charged = [0.0, 0.0, 0.0, 0.0]
        self.received = [0.0, 0.0, 0.0, 0.0]

    def before_lease(self, now: float) -> None:
        """Called before each LEASE: after a silence of ``node_ttl`` (a stall of this process
        or of Redis) the fleet may have dropped this member with its permits; carry on as a
        new one rather than report totals against counters that were deleted."""
        ttl = self.spec.limits_config.node_ttl
        if self.last_ok_sent is not None and now - self.last_ok_sent >= ttl:
            log.warning("limiter %s: silent for %.1fs; re-registering", self.label, ttl)
            self.new_incarnation()
            self.state_lost()

    def _refuses(self, v: Vector, now: float) -> bool:
        return not self.backend.healthy and _policy(self) == "fail_closed"

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
        self.sent_pause = self.pending_pause
        self.pending_pause = -math.inf
        cap = self.spec.max_concurrent
        ttl_ms = self.spec.limits_config.node_ttl * 1000.0
        self.lease_fresh = not self.seen
        self.seq += 1
        self.sent_at = now
        return [
            self.member,
            round(ttl_ms),
            1 if self.lease_fresh else 0,
            1 if leave else 0,
            round(pause_ms),
            cap or 0,
            permits_want if cap is not None else -1,
            released if cap is not None else -1,
            self.seq,
            self.confirmed_seq,
        ]

    def dim_args(self, wants: list[float], clamps: dict[int, float]) -> list[Any]:
        """The per-dimension LEASE arguments: limit, burst, want, the given and charged
        totals, clamp."""
        args: list[Any] = []
        for d, (limit, burst) in enumerate(self.dims_args()):
            args += [limit, burst, wants[d], self.given[d], self.charged[d], clamps.get(d, -1)]
        return args

    def common_failed(self) -> None:
        """A LEASE failed or timed out. Its totals stay counted (the next call re-sends them;
        if this one ran after all, nothing is applied twice); only the pause is re-sent."""
        self.pending_pause = max(self.pending_pause, self.sent_pause)

    def common_done(self, reply: Sequence[Any], now: float) -> list[int]:
        """Apply the shared part of a LEASE reply; return the grants."""
        epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        self.observe_epoch(epoch, bool(int(reply[1])), self.lease_fresh)
        self.members = max(1, int(reply[2]))
        self.apply_pause(int(reply[3]), now)
        if self.spec.max_concurrent is not None:
            self.permits_held = int(reply[4])
            self.fleet_permits = int(reply[18])
        for d in range(4):
            self.remote_levels[d] = float(reply[9 + d])
        self.fallback_bucket = None
        self.last_sync = now
        self.confirmed_seq = self.seq
        self.last_ok_sent = self.sent_at
        self.outage_charged = [0.0, 0.0, 0.0, 0.0]  # the outage, if any, is over
        # Tokens granted: this call's, or more when an earlier call ran but its answer was
        # lost (the granted total says so); a smaller total means the ledger was re-created.
        grants = []
        for d in range(4):
            now_granted, total = int(reply[5 + d]), float(reply[14 + d])
            grants.append(max(now_granted, int(total - self.received[d])))
            self.received[d] = total
        return grants

    def charge_unsynced(self) -> None:
        """Add the spend done without Redis to the charged total: at most one burst per limit
        per outage (the fallback admitted within this node's share of the rate, which the
        shared bucket refilled meanwhile), however many calls fail during it."""
        for d in self.spec.dims:
            room = max(0.0, self.effective_burst(d) - self.outage_charged[d])
            charge = min(self.unsynced[d], room)
            self.charged[d] += charge
            self.outage_charged[d] += charge
            self.unsynced[d] = 0.0
