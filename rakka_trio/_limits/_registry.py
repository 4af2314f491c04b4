"""Every limit key of a supervisor, and the lazily built Redis backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._config import EndpointConfig
from .._credentials import EnvCredential, Secret, StaticCredential
from .._errors import (
    ConfigError,
    UnknownEndpoint,
)
from .._events import Event
from .._extras import require
from ._gcra import KeySpec
from ._handle import LimiterHandle
from ._key import Key, fast_clock
from ._local import LocalKey
from ._stats import LimiterStatistics

if TYPE_CHECKING:
    from ._redis_backend import RedisBackend

log = logging.getLogger("rakka_trio.limiter")


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
        return key

    def release_key(self, key: Key) -> None:
        """One user of ``key`` left; close it when it was the last."""
        key._users -= 1
        if key._users <= 0:
            self._keys.pop((key.label, key.mode), None)
            key.close()

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
