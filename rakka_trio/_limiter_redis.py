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

import hashlib
import logging
import math
import random
import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from ._errors import LimiterUnavailable, RateLimitExceeded
from ._events import Event
from ._limiter import (
    Gcra,
    Key,
    KeySpec,
    LimiterFallback,
    LimiterRegistry,
    LimiterStateLost,
    Vector,
)
from ._redact import redact

__all__ = ["ApproximateKey", "RedisBackend", "StrictKey"]

log = logging.getLogger("rakka_trio.limiter")

KEY_PREFIX = "rakka:rl:"

# --- Lua ------------------------------------------------------------------------------------------
# Times are Redis TIME in milliseconds (floats). Limits arrive per call (L per minute, burst B)
# so the script holds no configuration; every node of a key must configure the same limits.

_COMMON = """
local S, N, C = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local st = redis.call('HMGET', S, 'e', 'ts', 'l1', 'l2', 'l3', 'l4', 'p', 'cu')
local epoch = st[1]
local created = 0
local ts = tonumber(st[2]) or now
local p = tonumber(st[7]) or 0
local cu = tonumber(st[8]) or 0
if not epoch then
  epoch = redis.sha1hex(ARGV[1] .. ':' .. t[1] .. ':' .. t[2])
  created = 1
  ts = now
  p = 0
  cu = 0
  redis.call('DEL', C)
end
local dt = now - ts
local function purge()
  local dead = redis.call('ZRANGEBYSCORE', N, '-inf', now)
  for _, d in ipairs(dead) do
    local gr = redis.call('HMGET', C, d .. ':g', d .. ':r')
    cu = cu - ((tonumber(gr[1]) or 0) - (tonumber(gr[2]) or 0))
    redis.call('HDEL', C, d .. ':g', d .. ':r')
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', N, '-inf', now)
    if cu < 0 then cu = 0 end
  end
end
local function level(i, L, B, init_full)
  if created == 1 or not st[2 + i] then
    if init_full then return B end
    return 0
  end
  local l = tonumber(st[2 + i]) + L * dt / 60000
  if l > B then l = B end
  return l
end
local function expire(ttl)
  local idle = math.max(600000, 3 * ttl)
  redis.call('PEXPIRE', S, idle)
  redis.call('PEXPIRE', N, idle)
  redis.call('PEXPIRE', C, idle)
end
"""

# LEASE: heartbeat, top up / give back escrow, charge debts, clamp, pause, permits.
# Permits are two monotone totals per node in C, granted (<node>:g) and released (<node>:r);
# the node holds g - r. Totals, unlike a "held" count, make a heartbeat and an admission that
# cross in flight commute. Approximate nodes ask for a number to hold (ARGV 7); strict nodes
# report their release total (ARGV 8, applied as a maximum).
# ARGV: 1 node, 2 ttl_ms, 3 init_full, 4 leave, 5 pause_ms, 6 max_conc, 7 permits_want
#       (-1: keep), 8 released_total (-1: none), then 4 dims x (L, B, want, give, charge,
#       clamp (-1: none)) from ARGV[9].
# Returns: epoch, created, members, pause_left_ms, permits_held, grant x4, level x4, granted.
LEASE_LUA = (
    _COMMON
    + """
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
local init_full = ARGV[3] == '1'
local leave = ARGV[4] == '1'
if leave then
  redis.call('ZREM', N, node)
else
  redis.call('ZADD', N, now + ttl, node)
end
purge()
local members = redis.call('ZCARD', N)
local pause = tonumber(ARGV[5])
if pause > 0 and now + pause > p then p = now + pause end
local paused = p > now
local grants = {0, 0, 0, 0}
local levels = {0, 0, 0, 0}
local fields = {'e', epoch, 'ts', now, 'p', p}
for i = 1, 4 do
  local b = 8 + (i - 1) * 6
  local L = tonumber(ARGV[b + 1])
  if L > 0 then
    local B = tonumber(ARGV[b + 2])
    local l = level(i, L, B, init_full)
    l = math.min(B, l + tonumber(ARGV[b + 4])) - tonumber(ARGV[b + 5])
    local clamp = tonumber(ARGV[b + 6])
    if clamp >= 0 and l > clamp then l = clamp end
    local want = tonumber(ARGV[b + 3])
    if want > 0 and l > 0 and not paused then
      local g = math.floor(math.min(want, l))
      grants[i] = g
      l = l - g
    end
    levels[i] = l
    table.insert(fields, 'l' .. i)
    table.insert(fields, l)
  end
end
local gr = redis.call('HMGET', C, node .. ':g', node .. ':r')
local g, r = tonumber(gr[1]) or 0, tonumber(gr[2]) or 0
local want_p = tonumber(ARGV[7])
local released = tonumber(ARGV[8])
if leave then
  released = g
  want_p = -1
end
if released > r then
  if released > g then released = g end
  cu = cu - (released - r)
  r = released
end
if want_p >= 0 then
  local held = g - r
  if want_p > held then
    local free = tonumber(ARGV[6]) - cu
    if free < 0 then free = 0 end
    local more = math.min(want_p - held, free)
    g = g + more
    cu = cu + more
  elseif want_p < held then
    r = r + held - want_p
    cu = cu - (held - want_p)
  end
end
if cu < 0 then cu = 0 end
if g > r then
  redis.call('HSET', C, node .. ':g', g, node .. ':r', r)
else
  redis.call('HDEL', C, node .. ':g', node .. ':r')
  g = 0
  r = 0
end
local held = g - r
table.insert(fields, 'cu')
table.insert(fields, cu)
redis.call('HSET', S, unpack(fields))
expire(ttl)
local left = 0
if p > now then left = math.ceil(p - now) end
return {epoch, created, members, left, held, grants[1], grants[2], grants[3], grants[4],
        math.floor(levels[1]), math.floor(levels[2]), math.floor(levels[3]),
        math.floor(levels[4]), g}
"""
)

# ADMIT (strict): take every limit (and a permit) or nothing. Lean on purpose: it runs once per
# admission, so no helper closures, globals cached in locals, only the limited dimensions, no
# write on a refusal, and only the state key unless a permit is involved.
# KEYS: state (and, for permits, nodes and permits). ARGV: 1 node, 2 the numbers packed in one
# string of little-endian doubles (every argument costs the client more than unpacking it costs
# Lua, and one struct.unpack is several times cheaper than parsing text): ttl_ms, init_full,
# max_conc (0: no permit), n (limited dimensions), n costs, then n x (dimension 1-4, L per
# minute, burst). Returns one integer (cheaper to parse than an array):
# 4 * wait_ms + 2 * created + admitted, where wait_ms is -1 when no permit is free.
ADMIT_LUA = """
local tonumber, call = tonumber, redis.call
local S = KEYS[1]
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local st = call('HMGET', S, 'e', 'ts', 'p', 'cu', 'l1', 'l2', 'l3', 'l4')
local created = 0
local epoch = st[1]
local ts = tonumber(st[2])
local p = tonumber(st[3]) or 0
local cu = tonumber(st[4]) or 0
local unpack_, s = struct.unpack, ARGV[2]
local ttl, full, maxc, n = unpack_('<dddd', s)
full = full == 1
if not epoch then
  created = 1
  epoch = redis.sha1hex(ARGV[1] .. ':' .. t[1] .. ':' .. t[2])
  ts = now
  p = 0
  cu = 0
  if KEYS[3] then call('DEL', KEYS[3]) end
end
local wait = 0
if p > now then wait = p - now end
local dt = now - ts
local upd = {'ts', now, false, false, false, false, false, false, false, false, false, false}
local k = 2
for j = 1, n do
  local c = unpack_('<d', s, 25 + 8 * j)
  local i, L, B = unpack_('<ddd', s, 9 + 8 * n + 24 * j)
  local l = tonumber(st[4 + i])
  if created == 1 or not l then
    if full then l = B else l = 0 end
  else
    l = l + L * dt / 60000
    if l > B then l = B end
  end
  if l < c then
    local w = (c - l) * 60000 / L
    if w > wait then wait = w end
  end
  if i == 1 then upd[k + 1] = 'l1' elseif i == 2 then upd[k + 1] = 'l2'
  elseif i == 3 then upd[k + 1] = 'l3' else upd[k + 1] = 'l4' end
  upd[k + 2] = l - c
  k = k + 2
end
if wait == 0 and maxc > 0 and cu >= maxc then
  local N, C = KEYS[2], KEYS[3]
  local dead = call('ZRANGEBYSCORE', N, '-inf', now)
  for _, d in ipairs(dead) do
    local gr = call('HMGET', C, d .. ':g', d .. ':r')
    cu = cu - ((tonumber(gr[1]) or 0) - (tonumber(gr[2]) or 0))
    call('HDEL', C, d .. ':g', d .. ':r')
  end
  if #dead > 0 then
    call('ZREMRANGEBYSCORE', N, '-inf', now)
    if cu < 0 then cu = 0 end
    call('HSET', S, 'cu', cu)
  end
  if cu >= maxc then wait = -1 end
end
if wait ~= 0 then
  if created == 1 then
    -- Refused at creation: store the initial levels (nothing taken) so the epoch sticks.
    for j = 1, n do upd[2 + 2 * j] = upd[2 + 2 * j] + unpack_('<d', s, 25 + 8 * j) end
    call('HSET', S, 'e', epoch, 'p', p, 'cu', cu, unpack(upd, 1, k))
    call('PEXPIRE', S, math.max(600000, 3 * ttl))
  end
  if wait > 0 then wait = math.ceil(wait) end
  return wait * 4 + created * 2
end
if created == 1 then
  call('HSET', S, 'e', epoch, 'p', p)
  call('PEXPIRE', S, math.max(600000, 3 * ttl))
end
if maxc > 0 then
  cu = cu + 1
  call('HINCRBY', KEYS[3], ARGV[1] .. ':g', 1)
  call('ZADD', KEYS[2], now + ttl, ARGV[1])
  upd[k + 1] = 'cu'
  upd[k + 2] = cu
  k = k + 2
end
call('HSET', S, unpack(upd, 1, k))
return created * 2 + 1
"""

_SCRIPTS = {
    "lease": (hashlib.sha1(LEASE_LUA.encode()).hexdigest(), LEASE_LUA),
    "admit": (hashlib.sha1(ADMIT_LUA.encode()).hexdigest(), ADMIT_LUA),
}

# Redis failures: protocol/connection errors, timeouts (coredis raises TimeoutError, an
# OSError), a connection torn down under a request (anyio), and our own backstop deadline.
_FAILURES = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    trio.TooSlowError,
)

_MIN_GAP = 0.01  # never sync one key more often than this (batches bursts of wake-ups)
_MIN_LEASE_ADMISSIONS = 20  # a lease covers at least this many admissions (≤ 5 trips / 100)
_CLAMP_URGENT = 0.05  # a provider clamp lowering the shared bucket by more syncs now


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
        """The burst of ``d``: configured, or at most the provider's lower limit (one minute's
        worth of it) once headers lowered the limit."""
        if self.effective[d] >= self.spec.limits[d]:
            return float(self.spec.bursts[d])
        return float(min(self.spec.bursts[d], self.effective[d]))

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
        return max(self._estimate(v, self._clock(), None), _MIN_GAP)

    def _estimate(self, v: Vector, now: float, ahead: list[float] | None) -> float:
        # An estimate: about one round trip when the shared bucket had room at the last sync,
        # otherwise the time this node's share of the refill needs to cover the deficit.
        wait = 0.0
        for d in self.spec.dims:
            deficit = v[d] + (ahead[d] if ahead else 0.0) - self.level[d]
            if deficit > 0:
                beyond = deficit - max(self.remote_levels[d], 0.0)
                share = self.effective[d] / 60.0 / max(1, self.members)
                wait = max(wait, beyond / share if beyond > 0 else _MIN_GAP)
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
        if seen - shared > burst * _CLAMP_URGENT or shared <= 0:
            super()._clamp(dim, remaining, now)
        else:
            self.pending_clamp[dim] = remaining

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
            horizon = min(max(horizon, _MIN_LEASE_ADMISSIONS / self.admission_rate), 60.0)
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
            self.level[d] -= gives[d]  # moved out now, restored if the call fails
        charges = self.charges()
        clamps = self.pending_clamp
        self.pending_clamp = {}
        cap = self.spec.max_concurrent
        permits = 0
        if cap is not None:
            permit_waiters = sum(1 for w in self._waiters if w.permit)
            busy = 1 if self.admission_rate > 0 else 0
            permits = 0 if leave else self._in_flight + permit_waiters + busy
        args = self.common_args(now, leave, permits)
        for d, (limit, burst) in enumerate(self.dims_args()):
            clamp = float(clamps.get(d, -1))
            if clamp >= 0:
                # The provider's remaining covers our escrow too: the shared part is the rest.
                clamp = max(0.0, clamp - max(self.level[d], 0.0))
            args += [limit, burst, wants[d], gives[d], charges[d], clamp]
        self.need = [0.0, 0.0, 0.0, 0.0]
        self.permit_waiting = False
        return args, (gives, charges, clamps, wants)

    def lease_done(self, reply: Sequence[Any], pending: Any, now: float) -> None:
        _gives, _charges, _clamps, wants = pending
        grants = self.common_done(reply, now)
        partial = False
        for d in self.spec.dims:
            self.level[d] += grants[d]
            if grants[d] < wants[d]:
                partial = True
        # Pace the next top-up: a partial grant means the shared bucket is dry, so come back
        # when this node's share of the refill could cover it (never in lock-step with others).
        gap = _MIN_GAP
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
                        batch = _MIN_LEASE_ADMISSIONS * self.rate[d] / self.admission_rate
                        missing = min(missing, max(batch, 1.0))
                    gap = max(gap, missing / (rate / max(1, self.members)))
            gap = min(gap, max(longest, _MIN_GAP))
        self.not_before = now + gap * random.uniform(0.8, 1.2)
        self.wake_head()

    def lease_failed(self, pending: Any) -> None:
        gives, charges, clamps, _wants = pending
        for d in self.spec.dims:
            self.level[d] += gives[d]
            self.unsynced[d] += charges[d]
        for d, remaining in clamps.items():
            self.pending_clamp.setdefault(d, remaining)

    def retighten(self, spec: KeySpec) -> None:
        super().retighten(spec)
        self._bursts_cache = None
        self.fallback_bucket = None


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
            "`await limiter.acquire(cost, max_wait=0)` instead of try_acquire()"
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
            # No permit free anywhere: poll, since another node's release can't wake us.
            return 0.05 if wait_ms < 0 else wait_ms / 1000.0
        if ask:
            self.known_grants += 1
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            self._give_back(v, cap is not None)
            raise
        return 0.0

    def admit_args(self, v: Vector, fresh: bool, max_conc: int) -> list[bytes]:
        """ADMIT's arguments; the unchanging parts are encoded once per limits change."""
        cached = self._admit_args
        if cached is None or cached[0] != self.effective:
            dims = self.spec.dims
            limits = struct.pack(
                f"<{3 * len(dims)}d",
                *[x for d in dims for x in (d + 1, self.effective[d], self.effective_burst(d))],
            )
            cached = (
                list(self.effective),
                self.backend.node_id.encode(),
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
        adjust = self.pending_adjust
        self.pending_adjust = [0.0, 0.0, 0.0, 0.0]
        charges = self.charges()
        clamps = self.pending_clamp
        self.pending_clamp = {}
        moved, self.spares = self.spares, 0
        self.released += moved
        args = self.common_args(now, leave, -1, self.released + self.unknown_released)
        for d, (limit, burst) in enumerate(self.dims_args()):
            give = max(-adjust[d], 0.0)
            charge = max(adjust[d], 0.0) + charges[d]
            args += [limit, burst, 0, give, charge, clamps.get(d, -1)]
        return args, (adjust, charges, clamps, moved)

    def lease_done(self, reply: Sequence[Any], pending: Any, now: float) -> None:
        self.common_done(reply, now)
        if self.spec.max_concurrent is not None:
            # Grants Redis made that this node never heard of (an admission cancelled while
            # in flight): release them. Answers still on their way are pending, not unknown.
            unknown = int(reply[13]) - self.known_grants - self.pending_grants
            if unknown > self.unknown_released:
                self.unknown_released = unknown
                self.signal()
        self.not_before = now + _MIN_GAP
        self.wake_head()

    def lease_failed(self, pending: Any) -> None:
        adjust, charges, clamps, moved = pending
        self.released -= moved
        self.spares += moved
        for d in self.spec.dims:
            self.pending_adjust[d] += adjust[d]
            self.unsynced[d] += charges[d]
        for d, remaining in clamps.items():
            self.pending_clamp.setdefault(d, remaining)


class RedisBackend:
    """The Redis connection of one supervisor and the background sync of its shared keys.

    :meth:`run` is a supervised task: it owns the ``coredis`` client and runs one sync loop per
    shared key (lease top-ups, give-backs, settlements, heartbeats). Nothing on a request's
    hot path awaits it in approximate mode.
    """

    def __init__(self, registry: LimiterRegistry, url: str, timeout: float) -> None:
        self.registry = registry
        self.url = url
        self.timeout = timeout
        self.node_id = registry.node_id
        self.healthy = True
        self.client: coredis.Redis[bytes] | None = None
        self.round_trips = 0
        self.failures = 0
        self._ready = trio.Event()
        self._keys_changed = trio.Event()

    def new_key(
        self, label: str, spec: KeySpec, clock: Callable[[], float], offset: float
    ) -> SharedKey:
        """A new shared key in ``spec``'s mode; its sync loop starts at once."""
        cls = StrictKey if spec.limits_config.mode == "strict" else ApproximateKey
        key = cls(label, spec, self.registry, clock, offset, self)
        key.signal()  # lease (or register) right away
        self._keys_changed.set()
        return key

    # -- calls ----------------------------------------------------------------------------------

    async def call(
        self, key: SharedKey, which: str, args: list[Any], keys: list[str] | None = None
    ) -> Any:
        """Run the ``lease`` or ``admit`` script for ``key`` (on ``keys``, default all three):
        its reply (a list for ``lease``, an integer for ``admit``), or ``None`` when Redis
        failed (health is updated)."""
        if self.client is None:
            with trio.move_on_after(self.timeout):
                await self._ready.wait()
            if self.client is None:
                self._failed("the Redis client is not connected yet")
                return None
        client = self.client
        sha, source = _SCRIPTS[which]
        self.round_trips += 1
        key.round_trips += 1
        try:
            # coredis bounds every command (connect_timeout, stream_timeout = redis_timeout);
            # no cancel scope of our own here: each costs several microseconds in the strict
            # hot path. EVALSHA directly: coredis's Script wrapper costs more than the Lua
            # itself, and a NoScriptError (a restart flushed the script cache) is rare.
            if keys is None:
                keys = key.redis_keys
            try:
                reply = await client.evalsha(sha, keys=keys, args=args)
            except coredis.exceptions.NoScriptError:
                await client.script_load(source)
                self.round_trips += 1
                key.round_trips += 1
                reply = await client.evalsha(sha, keys=keys, args=args)
        except _FAILURES as exc:
            if isinstance(exc, coredis.exceptions.ResponseError) and not isinstance(
                exc, coredis.exceptions.NoScriptError
            ):
                log.error("limiter script error for %s: %s", key.label, redact(str(exc)))
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        self._ok()
        if not isinstance(reply, list if which == "lease" else int):
            self._failed(f"unexpected {which} script reply {type(reply).__name__}")
            return None
        return reply

    def _failed(self, error: str) -> None:
        self.failures += 1
        if self.healthy:
            self.healthy = False
            text = redact(error)
            log.warning("limiter: Redis unavailable (%s); applying failure policies", text)
            self._publish(LimiterFallback(at=trio.current_time(), active=True, error=text))
            self._wake_all()

    def _ok(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.warning("limiter: Redis is back; shared limits resume")
            self._publish(LimiterFallback(at=trio.current_time(), active=False))
            for key in self._shared_keys():
                key.signal()
            self._wake_all()

    def _publish(self, event: Event) -> None:
        self.registry.publish(event)

    def _shared_keys(self) -> list[SharedKey]:
        return [k for k in self.registry.all_keys() if isinstance(k, SharedKey)]

    def _wake_all(self) -> None:
        for key in self._shared_keys():
            key.wake_head()

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Own the client and run every shared key's sync loop (a supervised task)."""
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url,
            stream_timeout=self.timeout,
            connect_timeout=self.timeout,
            retry_policy=NoRetryPolicy(),
        )
        async with client:
            self.client = client
            self._ready.set()
            try:
                async with trio.open_nursery() as nursery:
                    running: set[SharedKey] = set()
                    while True:
                        self._keys_changed = trio.Event()
                        running = {k for k in running if not k.closed}
                        for key in self._shared_keys():
                            if key not in running and not key.closed:
                                running.add(key)
                                nursery.start_soon(self._key_loop, key)
                        await self._keys_changed.wait()
            finally:
                self.client = None
                self._ready = trio.Event()
                with trio.CancelScope(shield=True), trio.move_on_after(self.timeout * 2):
                    await self._leave_all()

    async def _key_loop(self, key: SharedKey) -> None:
        clock = key._clock
        while not key.closed:
            await self._sync(key)
            sync_interval = key.spec.limits_config.sync_interval
            gap = key.not_before - clock()
            if not self.healthy:
                gap = max(gap, min(sync_interval, 0.5))  # probe, don't hammer
            if gap > 0:
                await trio.sleep(gap)
            with trio.move_on_after(max(0.0, key.last_sync + sync_interval - clock())):
                await key.sync_wanted.wait()
            key.sync_wanted = trio.Event()
        # The key's last endpoint left: give its escrow and permits back to the fleet.
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
            await self._sync(key, leave=True)

    async def _leave_all(self) -> None:
        """Give every key's escrow and permits back (this node is shutting down).

        Runs after the main client closed (cancellation tore its connections down), on a
        fresh short-lived one.
        """
        keys = [k for k in self._shared_keys() if not k.closed]
        if not keys:
            return
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url,
            stream_timeout=self.timeout,
            connect_timeout=self.timeout,
            retry_policy=NoRetryPolicy(),
        )
        async with client:
            self.client = client
            async with trio.open_nursery() as nursery:
                for key in keys:
                    nursery.start_soon(partial(self._sync, key, leave=True))
        self.client = None

    async def _sync(self, key: SharedKey, *, leave: bool = False) -> None:
        now = key._clock()
        args, pending = key.lease_args(now, leave)
        reply = await self.call(key, "lease", args)
        if reply is None:
            key.lease_failed(pending)
            return
        key.lease_done(reply, pending, key._clock())
