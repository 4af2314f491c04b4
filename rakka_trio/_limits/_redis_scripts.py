"""The Lua scripts of the shared modes and the errors that count as a Redis failure."""

from __future__ import annotations

import hashlib

import anyio
import coredis
import coredis.exceptions
import trio

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
#
# Idempotent: a call that timed out on the node may still run when Redis wakes (a stall), after
# the node has sent newer ones. So every call carries a sequence number and, for what it moves,
# this node's cumulative *totals* (tokens given back, charged; permits released) rather than
# deltas; the node's ledger (KEYS[4], one per node incarnation) keeps the totals already
# applied and the last sequence number. A call applies only the part of its totals not yet
# applied, a call overtaken by a newer one changes nothing, and grants are returned as a total
# too, so tokens granted to a call whose answer was lost reach the node with the next answer.
# Permits are two monotone totals per node in C, granted (<node>:g) and released (<node>:r);
# the node holds g - r. Approximate nodes ask for a number to hold (ARGV 7); strict nodes
# report their release total (ARGV 8, applied as a maximum).
# ARGV: 1 node, 2 ttl_ms, 3 init_full, 4 leave, 5 pause_ms, 6 max_conc, 7 permits_want
#       (-1: keep), 8 released_total (-1: none), 9 seq, 10 confirmed seq (0: none yet), then
#       4 dims x (L, B, want, given_total, charged_total, clamp (-1: none)) from ARGV[11].
# Returns: epoch, created, members, pause_left_ms, permits_held, grant x4, level x4, granted,
#          grant_total x4, permits in use fleet-wide -- or an empty list for a call overtaken
#          by a newer one.
LEASE_LUA = (
    _COMMON
    + """
local LG = KEYS[4]
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
local init_full = ARGV[3] == '1'
local leave = ARGV[4] == '1'
local seq = tonumber(ARGV[9])
local led = redis.call('GET', LG)
local tot = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
local rebase = false
if led then
  local v = {struct.unpack('<ddddddddddddd', led)}
  if seq <= v[1] then return {} end
  for k = 1, 12 do tot[k] = v[k + 1] end
elseif tonumber(ARGV[10]) > 0 then
  -- The ledger is gone although a call of this node was applied (Redis lost its data): take
  -- the node's totals as applied rather than charge or refund its whole history again.
  rebase = true
end
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
  local b = 10 + (i - 1) * 6
  local L = tonumber(ARGV[b + 1])
  local given, charged = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local give, charge = 0, 0
  if not rebase then
    give = math.max(0, given - tot[4 + i])
    charge = math.max(0, charged - tot[i])
  end
  tot[4 + i] = math.max(tot[4 + i], given)
  tot[i] = math.max(tot[i], charged)
  if L > 0 then
    local B = tonumber(ARGV[b + 2])
    local l = level(i, L, B, init_full)
    l = math.min(B, l + give) - charge
    local clamp = tonumber(ARGV[b + 6])
    if clamp >= 0 and l > clamp then l = clamp end
    local want = tonumber(ARGV[b + 3])
    if want > 0 and l > 0 and not paused then
      local g = math.floor(math.min(want, l))
      grants[i] = g
      tot[8 + i] = tot[8 + i] + g
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
-- The totals stay while the node lives (deleting them when equal made its next, larger
-- release total free permits still in use); a leaving node takes them with it.
if leave then
  redis.call('HDEL', C, node .. ':g', node .. ':r')
elseif g > 0 then
  redis.call('HSET', C, node .. ':g', g, node .. ':r', r)
end
local held = g - r
if leave then held = 0 end
table.insert(fields, 'cu')
table.insert(fields, cu)
redis.call('HSET', S, unpack(fields))
expire(ttl)
-- Kept after a leave too: a late call of this incarnation then finds itself overtaken.
redis.call('SET', LG, struct.pack('<ddddddddddddd', seq, unpack(tot)), 'PX',
           math.max(600000, 3 * ttl))
local left = 0
if p > now then left = math.ceil(p - now) end
return {epoch, created, members, left, held, grants[1], grants[2], grants[3], grants[4],
        math.floor(levels[1]), math.floor(levels[2]), math.floor(levels[3]),
        math.floor(levels[4]), g, tot[9], tot[10], tot[11], tot[12], cu}
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

SCRIPTS = {
    "lease": (hashlib.sha1(LEASE_LUA.encode()).hexdigest(), LEASE_LUA),
    "admit": (hashlib.sha1(ADMIT_LUA.encode()).hexdigest(), ADMIT_LUA),
}

# Redis failures: protocol/connection errors, timeouts (coredis raises TimeoutError, an
# OSError), a connection torn down under a request (anyio), and our own backstop deadline.
REDIS_FAILURES = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    trio.TooSlowError,
)

MIN_SYNC_GAP = 0.01  # never sync one key more often than this (batches bursts of wake-ups)
MIN_LEASE_ADMISSIONS = 20  # a lease covers at least this many admissions (≤ 5 trips / 100)
CLAMP_URGENT = 0.05  # a provider clamp lowering the shared bucket by more syncs now
