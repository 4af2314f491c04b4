"""Fleet-wide limits on a real redis-server, counted independently of the limiter's own state.

Several supervisors in one Trio run are several nodes (each its own registry, Redis client and
node id). Every test counts what the callers obtained — permits held at once, admissions in a
measured interval — with its own counters, and checks them against the exact bound: a broken
script or a broken permit ledger fails here even if the limiter's statistics agree with it.
Real sockets, so the real clock; every wait is under ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

import rakka_trio as rk
from tests.conftest import RedisServer, _free_port

pytestmark = pytest.mark.trio

KEY = rk.StaticCredential("sk-test-fleet-shared-0123456789")
_families = itertools.count()


def family() -> str:
    return f"fleet-{time.time_ns()}-{next(_families)}"


def config(url: str, node: str, model: str, credential: rk.Credential, **limits: Any) -> Any:
    limits.setdefault("mode", "approximate")
    limits.setdefault("sync_interval", 0.1)
    limits.setdefault("node_ttl", 2.0)
    return rk.SupervisorConfig(
        redis_url=url,
        node_id=node,
        redis_timeout=0.5,
        endpoints=[
            rk.EndpointConfig(
                name="ep",
                provider="openai",
                base_url="http://127.0.0.1:9/v1",
                model=model,
                credential=credential,
                limits=rk.RateLimits(**limits),
            )
        ],
    )


@asynccontextmanager
async def fleet(url: str, count: int, **limits: Any) -> AsyncIterator[list[rk.LimiterHandle]]:
    """``count`` nodes sharing one key; yields each node's limiter handle."""
    model = limits.pop("model", None) or family()
    credential = limits.pop("credential", KEY)
    async with AsyncExitStack() as stack:
        sups = [
            await stack.enter_async_context(
                rk.open_supervisor(config(url, f"node-{i}", model, credential, **limits))
            )
            for i in range(count)
        ]
        yield [s.limiter("ep") for s in sups]


async def until(read: Callable[[], Any], expected: Any) -> None:
    """Poll ``read()`` (awaited when it returns an awaitable) until it equals ``expected``;
    the caller's ``fail_after`` bounds the wait."""
    while True:
        value = read()
        if inspect.isawaitable(value):
            value = await value
        if value == expected:
            return
        await trio.sleep(0.05)


async def redis_int(server: RedisServer, *args: str) -> int:
    reply = await trio.to_thread.run_sync(lambda: server.command(*args))
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


# --- max_concurrent across nodes ------------------------------------------------------------------


async def test_strict_permits_released_and_retaken_are_never_freed_twice(
    redis_server: RedisServer,
) -> None:
    """Two nodes, cap 2: node A reserves and releases, then reserves twice and releases one;
    node B must then get one permit, not two (the script deleted A's granted/released totals
    when equal while A's release total kept growing, so A's next sync freed a permit still in
    use)."""
    async with fleet(redis_server.url, 2, mode="strict", max_concurrent=2) as (a, b):
        with trio.fail_after(10):
            (await a.reserve()).release()
            await trio.sleep(0.3)  # synced: A's totals are granted 1, released 1
            first, second = await a.reserve(), await a.reserve()
            first.release()
            await trio.sleep(0.3)  # synced: A holds one permit
            got = await b.reserve(max_wait=0.5)
            with pytest.raises(rk.RateLimited):
                await b.reserve(max_wait=0.5)  # A's second permit is still in use
            got.release()
            second.release()


async def test_approximate_permits_given_back_are_not_reused_while_the_sync_is_in_flight(
    private_redis: RedisServer,
) -> None:
    """Node A holds all 3 permits and releases them: its next sync gives 2 back. While that
    sync is held up in Redis (``CLIENT PAUSE``), A's callers must not keep using the permits
    it is giving back — else node B, whose request lands right after, gets permits A still
    uses."""
    async with fleet(private_redis.url, 2, max_concurrent=3, max_wait=None) as (a, b):
        with trio.fail_after(10):
            held = [await a.reserve() for _ in range(3)]
            await trio.sleep(0.3)
            private_redis.command("CLIENT", "PAUSE", "400")
            for r in held:
                r.release()
            await trio.sleep(0.05)  # A's sync is now waiting in Redis
            mine: list[rk.Reservation] = []
            for _ in range(3):
                with contextlib.suppress(rk.RateLimited):
                    mine.append(await a.reserve(max_wait=0))
            theirs: list[rk.Reservation] = []

            async def take(h: rk.LimiterHandle) -> None:
                with contextlib.suppress(rk.RateLimited):
                    theirs.append(await h.reserve(max_wait=1.0))

            async with trio.open_nursery() as n:
                for _ in range(3):
                    n.start_soon(take, b)  # B's sync queues behind A's in Redis
            assert len(mine) + len(theirs) <= 3
            assert mine and theirs  # not a vacuous pass: both got permits
            for r in mine + theirs:
                r.release()


async def test_an_idle_approximate_node_does_not_keep_the_only_permit(
    redis_server: RedisServer,
) -> None:
    """A node that was busy kept one spare permit for its next call — forever, as its demand
    estimate decays without reaching zero — so with a cap of 1 no other node ever got it."""
    async with fleet(redis_server.url, 2, max_concurrent=1, sync_interval=0.1) as (a, b):
        with trio.fail_after(10):
            for _ in range(5):
                (await a.reserve()).release()
            await trio.sleep(0.5)  # a is idle now
            (await b.reserve(max_wait=3.0)).release()


async def slow_redis(server: RedisServer, until: float) -> None:
    """Make every Redis call slow (``DEBUG SLEEP`` from another connection, back to back), so
    that syncs and admissions cross in flight as they do on a loaded network."""

    def run() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as conn:
            while time.monotonic() < until:
                conn.sendall(b"DEBUG SLEEP 0.003\r\n")
                conn.recv(64)
                time.sleep(0.002)

    await trio.to_thread.run_sync(run)


@pytest.mark.parametrize("mode", ["approximate", "strict"])
async def test_max_concurrent_holds_across_nodes(private_redis: RedisServer, mode: str) -> None:
    """Callers on three nodes come and go in bursts through permits of a cap of 3 for three
    seconds while Redis answers slowly; the permits held at once, counted by the callers,
    never exceed the cap."""
    cap = 3
    holding = peak = calls = 0
    async with fleet(
        private_redis.url, 3, mode=mode, max_concurrent=cap, max_wait=None, sync_interval=0.02
    ) as handles:
        end = trio.current_time() + 3.0

        async def caller(h: rk.LimiterHandle, seed: int) -> None:
            nonlocal holding, peak, calls
            rng = random.Random(seed)
            while trio.current_time() < end:
                await trio.sleep(rng.choice((0.0, 0.002, 0.01, 0.03)))
                async with h.reserve():
                    holding += 1
                    peak = max(peak, holding)
                    calls += 1
                    await trio.sleep(rng.choice((0.0, 0.001, 0.005)))
                    holding -= 1

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(slow_redis, private_redis, time.monotonic() + 3.0)
                for i, h in enumerate(handles):
                    for j in range(4):
                        n.start_soon(caller, h, i * 100 + j)
    assert peak <= cap
    assert calls > 50  # the permits were used, not just refused


# --- strict: the exact GCRA bound ------------------------------------------------------------


async def _hammer(handles: list[rk.LimiterHandle], seconds: float) -> tuple[int, float]:
    """Every node's four tasks try ``acquire(max_wait=0)`` back to back for ``seconds``;
    returns the admissions and the interval they all fell in (first try sent to last
    admission answered)."""
    admitted = 0
    first_sent = trio.current_time()
    last_answer = first_sent
    end = first_sent + seconds

    async def task(h: rk.LimiterHandle) -> None:
        nonlocal admitted, last_answer
        while trio.current_time() < end:
            try:
                await h.acquire(max_wait=0)
            except rk.RateLimited:
                await trio.sleep(0.001)
                continue
            admitted += 1
            last_answer = trio.current_time()

    async with trio.open_nursery() as n:
        for h in handles:
            for _ in range(4):
                n.start_soon(task, h)
    return admitted, last_answer - first_sent


async def test_strict_admissions_keep_the_exact_gcra_bound(redis_server: RedisServer) -> None:
    """Three nodes at 5 requests/s with a burst of 3. Admissions over any interval are at most
    ``burst + rate * interval``: at the start (the key is created full), after idling longer
    than a refill of the burst (the refill is capped at the burst), and under a steady
    overload (each admission advances the stored time)."""
    rate, burst = 5.0, 3
    limits = {
        "mode": "strict",
        "requests_per_minute": int(rate * 60),
        "requests_burst": burst,
        # Rare heartbeats: each one re-caps the stored level, which would hide a broken cap in
        # the admission script itself.
        "sync_interval": 30.0,
        "node_ttl": 60.0,
    }
    async with fleet(redis_server.url, 3, **limits) as handles:
        with trio.fail_after(20):
            got, span = await _hammer(handles, 0.1)
            assert burst <= got <= math.floor(burst + rate * span)
            await trio.sleep(1.0)  # idle: 5 units of refill, capped at the burst of 3
            got, span = await _hammer(handles, 0.1)
            assert got <= math.floor(burst + rate * span)
            assert got >= burst - 1  # the refill did happen (less the fraction in flight)
            got, span = await _hammer(handles, 2.0)  # steady overload
            assert got <= math.floor(burst + rate * span)
            assert got >= rate * 2.0 - burst  # and the budget is used


# --- cold start without Redis --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["approximate", "strict"])
async def test_a_fleet_started_while_redis_is_down_keeps_the_limit(mode: str) -> None:
    """Nodes that never reached Redis assume ``expected_nodes`` share the key: three of them,
    each offered far more than the limit, admit at most ``rate * time`` together (the
    fallback bucket starts empty, so not even a burst more)."""
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    rate = 30.0
    limits = {
        "mode": mode,
        "requests_per_minute": int(rate * 60),
        "expected_nodes": 3,
        "redis_failure_policy": "local_fallback",
        "max_wait": 0.0,
    }
    counts: list[int] = []
    with trio.fail_after(20):
        async with fleet(url, 3, **limits) as handles:
            start = trio.current_time()
            end = start + 2.0

            async def offer(h: rk.LimiterHandle) -> None:
                got = 0
                while trio.current_time() < end:
                    try:
                        await h.acquire()
                        got += 1
                    except rk.RateLimited:
                        pass
                    await trio.sleep(0.002)
                counts.append(got)

            async with trio.open_nursery() as n:
                for h in handles:
                    n.start_soon(offer, h)
            elapsed = trio.current_time() - start
    assert sum(counts) <= math.floor(rate * elapsed) + len(counts)  # rounding, per node
    assert sum(counts) >= rate * 0.5  # it does admit: the fallback is the share, not nothing
    assert all(c > 0 for c in counts)


# --- idle and rotated keys leave the fleet ----------------------------------------------------


async def test_idle_and_rotated_shared_keys_leave_the_fleet(redis_server: RedisServer) -> None:
    model = family()
    limits = {"requests_per_minute": 6000, "model": model, "key_idle_timeout": 1.0}
    async with fleet(redis_server.url, 2, **limits) as (a, b), trio.open_nursery() as n:
        label = a.key()
        members = f"rakka:rl:{{{label}}}:n"

        async def count(zset: str) -> int:
            return await redis_int(redis_server, "ZCARD", zset)

        busy = trio.CancelScope()

        async def keep_b_busy() -> None:
            with busy:
                while True:
                    b.try_acquire()  # in use (admitted or not)
                    await trio.sleep(0.05)

        n.start_soon(keep_b_busy)
        with trio.fail_after(15):
            await until(lambda: count(members), 2)
            # Rotation: a's old key is no longer its own; it leaves at once (nothing in flight).
            a.bind_credential(rk.Secret("sk-test-fleet-rotated-9876543210"))
            await until(lambda: count(members), 1)
            await until(lambda: b.statistics().keys[0].members, 1)  # b's share: all of it
            # Idle: key_idle_timeout after b stops, its key leaves too and its sync task ends.
            busy.cancel()
            registry = b._registry
            await until(lambda: len(registry.all_keys()), 0)
            assert await redis_int(redis_server, "ZCARD", members) == 0
            assert registry.evicted == 1


# --- the wait estimate in the shared modes -------------------------------------------------


@pytest.mark.parametrize("mode", ["approximate", "strict"])
async def test_wait_estimate_sees_the_fleet(redis_server: RedisServer, mode: str) -> None:
    """A router asks ``wait_estimate`` to skip an endpoint without waiting: another node
    holding the only permit, or a 429 another node saw, show here; nothing is taken."""
    async with fleet(redis_server.url, 2, mode=mode, max_concurrent=1) as (a, b):
        with trio.fail_after(10):
            r = await a.reserve()
            await until(b.wait_estimate, math.inf)  # once a sync told b the permit is taken
            r.release()
            await until(lambda: b.wait_estimate() < 1.0, True)
            (await b.reserve(max_wait=1.0)).release()
            a.observe_rate_limited(3.0)
            await until(lambda: 1.0 < b.wait_estimate() <= 3.0, True)  # the shared pause


async def test_wait_estimate_is_infinite_when_fail_closed_without_redis() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    limits = {"mode": "strict", "redis_failure_policy": "fail_closed", "max_wait": 1.0}
    async with fleet(url, 1, **limits) as (h,):
        with trio.fail_after(10):
            with pytest.raises(rk.LimiterUnavailable):
                await h.acquire()
            assert h.wait_estimate() == math.inf
