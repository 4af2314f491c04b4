"""What the fleet keeps in Redis: key names and the JSON records, checked on the way in.

Everything read back from Redis is treated as untrusted input: a record that does not parse
(another version, a hand edit, a hostile writer) is skipped with a warning, never a crash.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

import attrs

__all__ = [
    "COMMANDS",
    "MAX_ACTOR",
    "MAX_REASON",
    "FleetKeys",
    "FleetOverride",
    "decode_json",
    "new_command_id",
    "parse_ack",
]

COMMANDS = ("force_open", "disable", "reset")
MAX_REASON = 500
MAX_ACTOR = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
ACK_TTL_MS = 60_000  # acks are kept a minute: long enough for any operator to read them


class FleetKeys:
    """The Redis names of one fleet. All keys share the hash tag ``{fleet}`` (one cluster
    slot), so the fleet's pipelines and transactions stay on one node of a cluster."""

    def __init__(self, prefix: str, fleet: str) -> None:
        self.base = f"{prefix}{{{fleet}}}:"
        self.nodes = self.base + "nodes"  # sorted set: node id -> last registration (Unix)
        self.overrides = self.base + "overrides"  # hash: endpoint -> override JSON
        self.events = self.base + "events"  # capped stream: transitions and commands
        self.commands = self.base + "commands"  # pub/sub channel: every command, as issued

    def node(self, node_id: str) -> str:
        """The string key holding ``node_id``'s record (expires after ``node_ttl``)."""
        return f"{self.base}node:{node_id}"

    def acks(self, command_id: str) -> str:
        """The hash of the nodes that applied command ``command_id``."""
        return f"{self.base}acks:{command_id}"

    def ack_channel(self, node_id: str) -> str:
        """The pub/sub channel where acks for commands issued by ``node_id`` arrive."""
        return f"{self.base}ack-to:{node_id}"


def new_command_id() -> str:
    """A fresh command id (random, 16 hex digits)."""
    return secrets.token_hex(8)


def decode_json(raw: Any) -> Any:
    """JSON from a Redis reply (bytes or str); ``None`` when it is not valid JSON."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_text(value: Any, limit: int) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= limit)


@attrs.frozen(kw_only=True)
class FleetOverride:
    """An operator override stored for the whole fleet (and its audit record).

    ``command`` is ``force_open``, ``disable`` or ``reset`` (a reset is kept as a tombstone so
    a node that missed it still clears the override it applied). ``issued_at`` and ``until``
    are Unix times; ``until`` is ``None`` for "until reset". ``origin`` is the node id the
    command came from, ``actor`` who gave it and ``reason`` why.
    """

    id: str
    command: str
    endpoint: str
    issued_at: float
    until: float | None
    duration: float | None
    reason: str | None
    actor: str
    origin: str

    def active(self, now: float) -> bool:
        """True while a ``force_open``/``disable`` is in force at Unix time ``now``."""
        return self.command != "reset" and (self.until is None or now < self.until)

    def to_json(self) -> str:
        """The JSON stored in Redis and broadcast to the nodes."""
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @classmethod
    def from_data(cls, data: Any) -> FleetOverride | None:
        """Parse a decoded record; ``None`` when any field is missing or malformed."""
        if not isinstance(data, dict):
            return None
        try:
            record = cls(
                id=data["id"],
                command=data["command"],
                endpoint=data["endpoint"],
                issued_at=data["issued_at"],
                until=data["until"],
                duration=data["duration"],
                reason=data["reason"],
                actor=data["actor"],
                origin=data["origin"],
            )
        except (KeyError, TypeError):
            return None
        ok = (
            isinstance(record.id, str)
            and _ID_RE.match(record.id) is not None
            and record.command in COMMANDS
            and isinstance(record.endpoint, str)
            and _NAME_RE.match(record.endpoint) is not None
            and _finite(record.issued_at)
            and (record.until is None or _finite(record.until))
            and (record.duration is None or (_finite(record.duration) and record.duration > 0))
            and _optional_text(record.reason, MAX_REASON)
            and isinstance(record.actor, str)
            and 0 < len(record.actor) <= MAX_ACTOR
            and isinstance(record.origin, str)
            and 0 < len(record.origin) <= 256
        )
        return record if ok else None

    @classmethod
    def from_raw(cls, raw: Any) -> FleetOverride | None:
        """Parse JSON read from Redis; ``None`` when it is not a valid override."""
        return cls.from_data(decode_json(raw))


def parse_ack(raw: Any) -> tuple[str, str, float, bool] | None:
    """``(command id, node id, applied at, endpoint present)`` from an ack, or ``None``."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        return None
    command_id, node, applied_at, present = (
        data.get("command_id"),
        data.get("node"),
        data.get("applied_at"),
        data.get("present"),
    )
    if (
        not isinstance(command_id, str)
        or _ID_RE.match(command_id) is None
        or not isinstance(node, str)
        or not 0 < len(node) <= 256
        or not _finite(applied_at)
        or not isinstance(present, bool)
    ):
        return None
    assert applied_at is not None
    return command_id, node, float(applied_at), present


def ack_json(command_id: str, node: str, applied_at: float, present: bool) -> str:
    """The ack a node sends for a command it applied (or noted: endpoint not present)."""
    return json.dumps(
        {"command_id": command_id, "node": node, "applied_at": applied_at, "present": present},
        separators=(",", ":"),
    )
