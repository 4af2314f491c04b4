"""The Redis connection and the background sync of every shared key."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from .._events import Event
from .._redact import redact
from ._gcra import KeySpec
from ._redis_approximate import ApproximateKey
from ._redis_scripts import MIN_SYNC_GAP, REDIS_FAILURES, SCRIPTS
from ._redis_shared import SharedKey
from ._redis_strict import StrictKey
from ._registry import LimiterRegistry
from ._stats import LimiterFallback

log = logging.getLogger("rakka_trio.limiter")


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
        """Run the ``lease`` or ``admit`` script for ``key`` (on ``keys``, default state, nodes
        and permits):
        its reply (a list for ``lease``, an integer for ``admit``), or ``None`` when Redis
        failed (health is updated)."""
        if self.client is None:
            with trio.move_on_after(self.timeout):
                await self._ready.wait()
            if self.client is None:
                self._failed("the Redis client is not connected yet")
                return None
        client = self.client
        sha, source = SCRIPTS[which]
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
        except REDIS_FAILURES as exc:
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
        key.before_lease(now)
        args, pending = key.lease_args(now, leave)
        reply = await self.call(key, "lease", args, key.lease_keys)
        if reply is None:
            key.lease_failed(pending)
            return
        if not reply:
            # Overtaken by a newer call of this node (only a call sent after a timed-out one
            # that Redis ran late can be): the newer one carried everything.
            key.not_before = key._clock() + MIN_SYNC_GAP
            return
        key.lease_done(reply, pending, key._clock())
