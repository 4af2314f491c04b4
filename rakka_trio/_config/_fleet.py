"""The fleet's configuration: many processes, one view and one set of operator overrides.

Kept apart from ``_classes`` (which imports it) so the supervisor's config stays one screen of
fields; the checks mirror the ones there and raise :class:`~rakka_trio.ConfigError` naming the
field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import ConfigError

__all__ = ["FleetConfig", "fleet_config"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
# Redis key prefixes: printable, no spaces or braces (the fleet name goes in a hash tag).
_PREFIX_RE = re.compile(r"^[A-Za-z0-9:._\-]{1,64}$")


def _positive(name: str, value: Any, errors: list[tuple[str, str]]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append((name, f"must be a number, got {value!r}"))
    elif not math.isfinite(value) or value <= 0:
        errors.append((name, f"must be a positive finite number, got {value!r}"))


@attrs.frozen(kw_only=True)
class FleetConfig:
    """Join the fleet ``name`` through the supervisor's ``redis_url`` (see docs/fleet.md).

    Every ``publish_interval`` seconds the node refreshes its registration (which expires
    after ``node_ttl`` seconds without one) and publishes its per-endpoint figures, in one
    pipelined write. Fleet commands wait ``ack_timeout`` seconds for every live node's ack.
    ``open_supervisor`` waits at most ``join_timeout`` seconds for the fleet's active
    overrides before it serves (Redis unreachable: it starts without them and applies them
    once the link is up). Transitions and commands go to a Redis stream capped near
    ``stream_maxlen`` entries. Every Redis name starts with ``key_prefix``.
    """

    name: str
    publish_interval: float = 1.0
    node_ttl: float = 5.0
    ack_timeout: float = 2.0
    join_timeout: float = 2.0
    stream_maxlen: int = 10_000
    key_prefix: str = "rakka:fleet:"

    def __attrs_post_init__(self) -> None:
        errors: list[tuple[str, str]] = []
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            errors.append(
                (
                    "name",
                    "must be 1-128 characters of letters, digits, '.', '_' or '-'; "
                    f"got {self.name!r}",
                )
            )
        for field in ("publish_interval", "node_ttl", "ack_timeout", "join_timeout"):
            _positive(field, getattr(self, field), errors)
        maxlen = self.stream_maxlen
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 100:
            errors.append(("stream_maxlen", f"must be an integer >= 100, got {maxlen!r}"))
        if not isinstance(self.key_prefix, str) or not _PREFIX_RE.match(self.key_prefix):
            errors.append(
                (
                    "key_prefix",
                    "must be 1-64 characters of letters, digits, ':', '.', '_' or '-'; "
                    f"got {self.key_prefix!r}",
                )
            )
        if not errors and self.node_ttl < 2 * self.publish_interval:
            # One late heartbeat must not make a healthy node vanish from the fleet.
            errors.append(("node_ttl", "must be at least twice publish_interval"))
        if errors:
            raise ConfigError(errors)


def fleet_config(value: Any) -> FleetConfig | None:
    """Converter of ``SupervisorConfig.fleet``: a :class:`FleetConfig`, ``None``, or a table
    (from TOML or a dict) with its fields."""
    if value is None or isinstance(value, FleetConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError([("$", f"must be a FleetConfig or a table, got {type(value).__name__}")])
    fields = set(attrs.fields_dict(FleetConfig))
    unknown = [str(k) for k in value if k not in fields]
    if unknown:
        raise ConfigError([(key, "unknown field") for key in sorted(unknown)])
    if "name" not in value:
        raise ConfigError([("name", "is required")])
    return FleetConfig(**{str(k): v for k, v in value.items()})
