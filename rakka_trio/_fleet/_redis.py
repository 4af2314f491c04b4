"""The fleet's use of ``coredis`` on Trio: one way to make a client, one way to tell a Redis
failure (which the fleet absorbs) from anything else (which propagates, cancellation first)."""

from __future__ import annotations

from typing import NoReturn

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from .._redact import redact

__all__ = ["REDIS_FAILURES", "new_client", "redis_failure", "reraise_without_redis_noise"]

REDIS_FAILURES: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    trio.TooSlowError,
)


def new_client(url: str, timeout: float) -> coredis.Redis[bytes]:
    """A client whose every connect and reply is bounded by ``timeout`` and which never
    retries on its own (the link decides when to reconnect)."""
    return coredis.Redis.from_url(
        url, stream_timeout=timeout, connect_timeout=timeout, retry_policy=NoRetryPolicy()
    )


def redis_failure(exc: BaseException) -> str | None:
    """The redacted text of a Redis failure, or ``None`` when ``exc`` (or any exception in
    its group) is something else — cancellation included — and must propagate."""
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    if not leaves or not all(isinstance(e, REDIS_FAILURES) for e in leaves):
        return None
    first = leaves[0]
    return redact(f"{type(first).__name__}: {first}")[:300]


def reraise_without_redis_noise(exc: BaseException) -> NoReturn:
    """Re-raise ``exc``, less the Redis failures grouped with it.

    Cancelling a ``coredis`` client mid-flight makes its teardown raise connection errors
    beside the ``Cancelled``; left in the group they would survive the cancel scope that
    absorbs the ``Cancelled`` and crash its owner. The cancellation (or whatever else is not a
    Redis failure) goes on untouched.
    """
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(REDIS_FAILURES)
        if rest is not None and rest is not exc:
            raise rest
    raise exc
