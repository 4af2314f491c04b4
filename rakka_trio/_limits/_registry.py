"""Every limit key of a supervisor, and the lazily built Redis backend."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._config import EndpointConfig
from .._credentials import EnvCredential, Secret, StaticCredential
from .._errors import (
    ConfigError,
    UnknownEndpoint,
)
from .._events import Event
from .._extras import require
from ._gcra import KeySpec
from ._handle import LimiterHandle, server_identity
from ._key import Key, fast_clock
from ._local import LocalKey
from ._stats import LimiterStatistics

if TYPE_CHECKING:
    from ._redis_backend import RedisBackend

log = logging.getLogger("rakka_trio.limiter")

RETIRED_POLL = 1.0  # how often a retired key still in use is checked again (s)


# --- the registry (one per supervisor) ----------------------------------------------------------


def _static_fingerprint(config: EndpointConfig) -> str | None:
    """The credential fingerprint when it is known without I/O (static or set env var)."""
    cred = config.credential
    if isinstance(cred, StaticCredential):
        return cred.value.fingerprint
    if isinstance(cred, EnvCredential):
        import os

        value = os.environ.get(cred.var)
        if value:
            return Secret(value).fingerprint
    return None


class LimiterRegistry:
    """Every limit key of a supervisor, the endpoints' handles, and the Redis backend.

    Keys are shared by label (and mode): two endpoints with the same provider and API key
    share one budget per model family, enforcing the stricter of their limits.
    """

    def __init__(
        self,
        *,
        node_id: str,
        redis_url: str | None,
        redis_timeout: float,
        publish: Callable[[Event], None],
        start_task: Callable[..., None],
    ) -> None:
        self.node_id = node_id
        self.redis_url = redis_url
        self.redis_timeout = redis_timeout
        self._publish = publish
        self._start_task = start_task
        self._handles: dict[str, LimiterHandle] = {}
        self._keys: dict[tuple[str, str], Key] = {}
        self.backend: RedisBackend | None = None
        self.evicted = 0  # keys dropped because idle or retired
        self._sweeper_started = False
        self._sweep_wanted = trio.Event()
        # Per key: the activity counters last seen and when they last changed (Trio time).
        self._seen: dict[Key, tuple[tuple[int, ...], float]] = {}

    def publish(self, event: Event) -> None:
        """Publish a limiter event on the supervisor's bus."""
        self._publish(event)

    def add(self, config: EndpointConfig) -> LimiterHandle:
        """Create the limiter handle of a new endpoint."""
        limits = config.limits
        if limits.mode != "local" and self.redis_url is None:
            raise ConfigError(
                [("limits.mode", f"mode {limits.mode!r} needs the supervisor's redis_url")]
            )
        handle = LimiterHandle(
            config.name,
            config.provider,
            limits,
            self,
            default_model=config.model,
            fingerprint=_static_fingerprint(config),
            server=limits.server_scope or server_identity(config.base_url),
        )
        self._handles[config.name] = handle
        if limits.mode != "local":
            self._ensure_backend()
        if config.model is not None:
            handle._key(None)  # show the endpoint's own key in statistics from the start
        return handle

    def remove(self, name: str) -> None:
        """Forget an endpoint's handle; keys no other endpoint uses are closed."""
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle._close()

    def handle(self, name: str) -> LimiterHandle:
        """The handle of endpoint ``name``."""
        try:
            return self._handles[name]
        except KeyError:
            raise UnknownEndpoint(name) from None

    def statistics(self, name: str) -> LimiterStatistics | None:
        """The statistics of endpoint ``name``'s limiter (``None`` if it has none)."""
        handle = self._handles.get(name)
        return None if handle is None else handle.statistics()

    def key_for(self, label: str, spec: KeySpec) -> Key:
        """The shared key for ``label`` in ``spec``'s mode, created on first use."""
        mode = spec.limits_config.mode
        key = self._keys.get((label, mode))
        if key is None or key.closed:
            clock, offset = fast_clock()
            if mode == "local":
                key = LocalKey(label, spec, self, clock, offset)
            else:
                backend = self._ensure_backend()
                key = backend.new_key(label, spec, clock, offset)
            self._keys[(label, mode)] = key
            self._start_sweeper()
        elif spec != key.spec:
            merged = key.spec.merge(spec)
            if merged != key.spec:
                log.warning(
                    "endpoints sharing limit key %s configure different limits; "
                    "enforcing the stricter of each",
                    label,
                )
                key.retighten(merged)
        key._users += 1
        key.retired = False
        return key

    def release_key(self, key: Key) -> None:
        """One user of ``key`` left (its endpoint was removed); close it when it was the last
        (its waiters fail with :class:`LimiterUnavailable`)."""
        key._users -= 1
        if key._users <= 0:
            self._drop(key)

    def retire_key(self, key: Key) -> None:
        """One user of ``key`` moved to another key (credential rotation): when it was the
        last, the key is dropped as soon as nothing is in flight on it."""
        key._users -= 1
        if key._users <= 0 and not key.closed:
            key.retired = True
            self._sweep_wanted.set()

    def _drop(self, key: Key) -> None:
        if self._keys.get((key.label, key.mode)) is key:
            del self._keys[(key.label, key.mode)]
        self._seen.pop(key, None)
        key.close()

    # -- eviction ---------------------------------------------------------------------------------

    def _start_sweeper(self) -> None:
        if not self._sweeper_started:
            self._sweeper_started = True
            self._start_task("limiter:evict", self._sweeper)

    async def _sweeper(self) -> None:
        """Drop keys idle for their ``key_idle_timeout`` and retired keys once idle (a shared
        key then leaves the fleet and its sync task ends)."""
        while True:
            wake_at = self.sweep(trio.current_time())
            with trio.move_on_at(wake_at):
                await self._sweep_wanted.wait()
            self._sweep_wanted = trio.Event()

    def sweep(self, now: float) -> float:
        """One pass of the sweeper at Trio time ``now``; returns when the next is due."""
        wake_at = math.inf
        for key in list(self._keys.values()):
            activity = key.activity()
            seen = self._seen.get(key)
            if seen is None or seen[0] != activity:
                seen = self._seen[key] = (activity, now)
            timeout = key.spec.limits_config.key_idle_timeout
            idle_enough = timeout is not None and now - seen[1] >= timeout
            if (key.retired or idle_enough) and key.evictable():
                log.info(
                    "limiter key %s dropped (%s)", key.label, "retired" if key.retired else "idle"
                )
                self.evicted += 1
                self._drop(key)
                continue
            if key.retired:
                wake_at = min(wake_at, now + RETIRED_POLL)
            if timeout is not None:
                # Sampled four times per timeout: dropped within 1.25 x the idle time.
                wake_at = min(wake_at, now + timeout / 4)
        return wake_at

    def _ensure_backend(self) -> RedisBackend:
        if self.backend is None:
            require("coredis", "redis", "the approximate and strict limiter modes")
            from ._redis_backend import RedisBackend

            assert self.redis_url is not None
            self.backend = RedisBackend(self, self.redis_url, self.redis_timeout)
            self._start_task("limiter:redis", self.backend.run)
        return self.backend

    def all_keys(self) -> list[Key]:
        """Every open key (for the Redis backend's sync loop)."""
        return list(self._keys.values())
