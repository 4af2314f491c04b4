"""Control-plane protocol v1: the JSON messages spoken over the websocket (DESIGN §4.8).

Every frame is one JSON object with a ``"type"`` tag. Messages are frozen attrs classes;
a private cattrs converter (un)structures them as a tagged union on ``"type"``.

Decoding what a client sends is strict: unknown fields, wrong JSON types, non-finite numbers,
duplicate keys and control characters in text fields are all refused with a
:class:`ProtocolError` whose ``code`` and ``message`` go back to the client in an ``error``
frame. Messages never quote the offending *value* (only field names and JSON type names), so
a token pasted into the wrong field is never echoed back or logged.

Server frames are built from supervisor events and statistics by :func:`frame_from_event`
and :func:`snapshot_from_statistics`. They are JSON-safe: enums become their string values,
Trio-clock times become both "seconds from now" (``open_until_in``, ``open_for``) and Unix
wall-clock times (``open_until_wall``), and ``math.inf`` ("until reset") becomes ``null``
with ``until_reset: true``.
"""

import json
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from ._errors import RakkaError
from ._events import (
    Command,
    EndpointAdded,
    EndpointRemoved,
    Event,
    Lagged,
    Stats,
    TaskRestarted,
    Transition,
)
from ._redact import redact

__all__ = [
    "CLIENT_TYPES",
    "PROTOCOL_VERSION",
    "SERVER_TYPES",
    "AckFrame",
    "ClientMessage",
    "CommandFrame",
    "Disable",
    "EndpointAddedFrame",
    "EndpointRemovedFrame",
    "EndpointState",
    "ErrorCode",
    "ErrorFrame",
    "ForceOpen",
    "GetState",
    "Hello",
    "LaggedFrame",
    "MessageId",
    "ProtocolError",
    "Reset",
    "ServerFrame",
    "Snapshot",
    "StatsFrame",
    "TaskRestartedFrame",
    "TransitionFrame",
    "UnknownFrame",
    "WelcomeFrame",
    "decode_client_message",
    "decode_server_frame",
    "encode",
    "endpoint_state",
    "frame_from_event",
    "peek_id",
    "snapshot_from_statistics",
    "to_dict",
]

PROTOCOL_VERSION: Final = 1

MessageId: TypeAlias = str | int
"""A command id chosen by the client: a short string or an integer; echoed in the reply."""

# Field limits: generous for humans, small enough that one frame cannot carry anything
# surprising into the audit log or every subscriber's terminal.
MAX_ID_LENGTH: Final = 128
MAX_ENDPOINT_LENGTH: Final = 256
MAX_CLIENT_LENGTH: Final = 128
MAX_REASON_LENGTH: Final = 1000
MAX_TOKEN_LENGTH: Final = 4096
MAX_DURATION: Final = 366 * 86400.0  # one year; longer than that means "until reset" (null)
_JSON_SAFE_INT: Final = 2**53  # larger ints lose precision in JavaScript clients


class ErrorCode:
    """The ``code`` values of ``error`` frames (stable strings; clients switch on them)."""

    BAD_JSON: Final = "bad_json"
    """The text frame is not valid JSON (or uses NaN/Infinity, duplicate keys, deep nesting)."""
    NOT_OBJECT: Final = "not_object"
    """Valid JSON, but not an object."""
    BINARY_FRAME: Final = "binary_frame"
    """A binary websocket frame; the protocol is JSON text only."""
    TOO_LARGE: Final = "too_large"
    """The frame exceeds the server's ``max_message_size``."""
    UNKNOWN_TYPE: Final = "unknown_type"
    """Missing ``type`` or one this server does not know."""
    INVALID: Final = "invalid"
    """Unknown fields, missing fields, wrong field types or out-of-range values."""
    HELLO_REQUIRED: Final = "hello_required"
    """The first frame of a connection must be ``hello``."""
    HELLO_TIMEOUT: Final = "hello_timeout"
    """No ``hello`` arrived in time."""
    UNEXPECTED: Final = "unexpected"
    """A message that is valid but not allowed here (a second ``hello``, a server frame)."""
    UNSUPPORTED_PROTOCOL: Final = "unsupported_protocol"
    """The client asked for a protocol version this server does not speak."""
    UNAUTHORIZED: Final = "unauthorized"
    """No valid token and this server does not admit viewers; the connection is closed."""
    FORBIDDEN: Final = "forbidden"
    """A viewer (read-only connection) sent a command."""
    UNKNOWN_ENDPOINT: Final = "unknown_endpoint"
    """The command names an endpoint the supervisor does not have."""
    RATE_LIMITED: Final = "rate_limited"
    """Too many frames; slow down (persisting gets the connection closed)."""
    TOO_MANY_CONNECTIONS: Final = "too_many_connections"
    """The server's connection cap is reached; try again later."""
    SHUTTING_DOWN: Final = "shutting_down"
    """The supervisor is stopping."""
    INTERNAL: Final = "internal"
    """The server failed to carry out a valid command (logged server-side)."""


class ProtocolError(RakkaError, ValueError):
    """A frame broke protocol v1. ``code`` is an :class:`ErrorCode` value; ``id`` is the
    command id when it could be recovered from the frame (so the reply can echo it)."""

    def __init__(self, code: str, message: str, *, id: MessageId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = id


class _InvalidField(ValueError):
    """Raised by field hooks and validators; carries the field path and a value-free message."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.text = message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --- field validators (run when a message is built, by the server or by cattrs) --------------


def _has_control(text: str) -> bool:
    # Control, format (bidi overrides) and line/paragraph separators could rewrite an
    # operator's terminal or forge log lines when the text is shown to every subscriber.
    return not text.isprintable()


def _text(
    max_len: int, *, allow_empty: bool = False
) -> Callable[[Any, "attrs.Attribute[Any]", Any], None]:
    def check(_: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value is None:
            return
        if not allow_empty and not value:
            raise _InvalidField("must not be empty", attribute.name)
        if len(value) > max_len:
            raise _InvalidField(f"longer than {max_len} characters", attribute.name)
        if _has_control(value):
            raise _InvalidField("contains control or formatting characters", attribute.name)

    return check


def _check_id(_: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if isinstance(value, str):
        _text(MAX_ID_LENGTH)(None, attribute, value)
    elif value is not None and not -_JSON_SAFE_INT <= value <= _JSON_SAFE_INT:
        raise _InvalidField("integer ids must be within ±2**53", attribute.name)


def _check_duration(_: Any, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
    if value is None:
        return
    if not 0 < value <= MAX_DURATION:
        raise _InvalidField(
            f"must be a number of seconds > 0 and <= {MAX_DURATION:.0f} (null means until reset)",
            attribute.name,
        )


def _check_token(_: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and len(value) > MAX_TOKEN_LENGTH:
        raise _InvalidField(f"longer than {MAX_TOKEN_LENGTH} characters", attribute.name)


# --- client -> server -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hello:
    """First frame of every connection: ``{"type":"hello","token":…,"client":…}``.

    ``client`` names the program or person (it appears in the audit trail as
    ``client@address:port``); ``protocol``, when given, must be 1.
    """

    TYPE: ClassVar[str] = "hello"
    token: str | None = attrs.field(default=None, validator=_check_token, repr=False)
    client: str = attrs.field(default="unnamed", validator=_text(MAX_CLIENT_LENGTH))
    protocol: int | None = None


@attrs.frozen(kw_only=True)
class ForceOpen:
    """Operator command: hold ``endpoint``'s breaker open for ``duration`` s (null: until reset)."""

    TYPE: ClassVar[str] = "force_open"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    duration: float | None = attrs.field(default=None, validator=_check_duration)
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))


@attrs.frozen(kw_only=True)
class Reset:
    """Operator command: force-close ``endpoint``'s breaker and clear any forced state."""

    TYPE: ClassVar[str] = "reset"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))


@attrs.frozen(kw_only=True)
class Disable:
    """Operator command: bypass ``endpoint``'s breaker for ``duration`` s (null: until reset)."""

    TYPE: ClassVar[str] = "disable"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    duration: float | None = attrs.field(default=None, validator=_check_duration)
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))


@attrs.frozen(kw_only=True)
class GetState:
    """Ask for a fresh snapshot; answered by an ``ack`` carrying it (viewers may ask too)."""

    TYPE: ClassVar[str] = "get_state"
    id: MessageId = attrs.field(validator=_check_id)


ClientMessage: TypeAlias = Hello | ForceOpen | Reset | Disable | GetState
"""Everything a client may send."""

CLIENT_TYPES: Final[Mapping[str, type[Any]]] = {
    cls.TYPE: cls for cls in (Hello, ForceOpen, Reset, Disable, GetState)
}

# --- server -> client -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class EndpointState:
    """One endpoint in a snapshot (``welcome``, ``stats``, the ``get_state`` ack).

    ``open_until_in`` is seconds from the snapshot until the current state's timer ends and
    ``open_until_wall`` the same moment as Unix time; both are null when the state has no
    timer, and ``until_reset`` is true when an operator forced it without expiry. ``open_for``
    is seconds since the breaker opened (null while closed). ``in_flight``, ``queue_depth``,
    ``limiter_utilization`` and the latency percentiles (seconds) are null until the
    supervisor reports them.
    """

    name: str
    provider: str
    base_url: str
    state: str
    consecutive_failures: int
    failures: int
    successes: int
    rejected: int
    trips: int
    failure_rate: float | None
    calls_in_window: int
    failures_in_window: int
    open_for: float | None
    open_until_in: float | None
    open_until_wall: float | None
    until_reset: bool
    forced_reason: str | None
    forced_by: str | None
    probes_in_flight: int
    in_flight: int | None = None
    queue_depth: int | None = None
    limiter_utilization: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None


@attrs.frozen(kw_only=True)
class Snapshot:
    """The state of every endpoint at ``wall`` (Unix time) on node ``node_id``."""

    node_id: str
    wall: float
    endpoints: list[EndpointState]


@attrs.frozen(kw_only=True)
class WelcomeFrame:
    """Answer to a good ``hello``: the connection's ``role`` and a first snapshot."""

    TYPE: ClassVar[str] = "welcome"
    protocol: int
    role: str
    server: str
    stats_interval: float
    snapshot: Snapshot


@attrs.frozen(kw_only=True)
class TransitionFrame:
    """A breaker changed state (``from``/``to`` on the wire). ``open_until_in`` counts from
    the event."""

    TYPE: ClassVar[str] = "transition"
    wall: float
    endpoint: str
    from_state: str
    to_state: str
    cause: str
    consecutive_failures: int
    failure_rate: float | None
    calls_in_window: int
    trips: int
    open_until_in: float | None
    open_until_wall: float | None
    until_reset: bool
    actor: str | None
    reason: str | None


@attrs.frozen(kw_only=True)
class CommandFrame:
    """Audit record of an operator command, sent to every subscriber."""

    TYPE: ClassVar[str] = "command"
    wall: float
    endpoint: str
    command: str
    actor: str
    reason: str | None
    duration: float | None


@attrs.frozen(kw_only=True)
class StatsFrame:
    """Periodic snapshot (about once per ``stats_interval``), same fields as :class:`Snapshot`."""

    TYPE: ClassVar[str] = "stats"
    node_id: str
    wall: float
    endpoints: list[EndpointState]


@attrs.frozen(kw_only=True)
class AckFrame:
    """A command succeeded. ``state`` is the endpoint's breaker state afterwards;
    ``snapshot`` answers ``get_state``."""

    TYPE: ClassVar[str] = "ack"
    id: MessageId
    command: str
    endpoint: str | None = None
    state: str | None = None
    snapshot: Snapshot | None = None


@attrs.frozen(kw_only=True)
class ErrorFrame:
    """Something was refused. ``id`` echoes the command's id when it could be read."""

    TYPE: ClassVar[str] = "error"
    id: MessageId | None
    code: str
    message: str


@attrs.frozen(kw_only=True)
class LaggedFrame:
    """This connection fell behind: ``dropped`` older events were discarded for it."""

    TYPE: ClassVar[str] = "lagged"
    wall: float
    dropped: int


@attrs.frozen(kw_only=True)
class EndpointAddedFrame:
    """An endpoint was registered with the supervisor."""

    TYPE: ClassVar[str] = "endpoint_added"
    wall: float
    endpoint: str


@attrs.frozen(kw_only=True)
class EndpointRemovedFrame:
    """An endpoint was removed from the supervisor."""

    TYPE: ClassVar[str] = "endpoint_removed"
    wall: float
    endpoint: str


@attrs.frozen(kw_only=True)
class TaskRestartedFrame:
    """A supervised task crashed and is restarted after ``backoff`` seconds."""

    TYPE: ClassVar[str] = "task_restarted"
    wall: float
    task: str
    error: str
    crashes: int
    backoff: float


@attrs.frozen(kw_only=True)
class UnknownFrame:
    """A server frame of a type this client does not know (a newer server); kept raw."""

    type: str
    data: Mapping[str, Any]


ServerFrame: TypeAlias = (
    WelcomeFrame
    | TransitionFrame
    | CommandFrame
    | StatsFrame
    | AckFrame
    | ErrorFrame
    | LaggedFrame
    | EndpointAddedFrame
    | EndpointRemovedFrame
    | TaskRestartedFrame
)
"""Everything a v1 server sends."""

SERVER_TYPES: Final[Mapping[str, type[Any]]] = {
    cls.TYPE: cls
    for cls in (
        WelcomeFrame,
        TransitionFrame,
        CommandFrame,
        StatsFrame,
        AckFrame,
        ErrorFrame,
        LaggedFrame,
        EndpointAddedFrame,
        EndpointRemovedFrame,
        TaskRestartedFrame,
    )
}

# --- the converter --------------------------------------------------------------------------


def _structure_str(value: Any, _: Any) -> str:
    if type(value) is str:
        return value
    raise _InvalidField(f"expected a string, got {_json_type(value)}")


def _structure_int(value: Any, _: Any) -> int:
    if type(value) is int:
        return value
    raise _InvalidField(f"expected an integer, got {_json_type(value)}")


def _structure_float(value: Any, _: Any) -> float:
    # bool is an int subclass in Python but a distinct JSON type: refuse it.
    if type(value) is int or type(value) is float:
        number = float(value)
        if math.isfinite(number):
            return number
        raise _InvalidField("expected a finite number")
    raise _InvalidField(f"expected a number, got {_json_type(value)}")


def _structure_bool(value: Any, _: Any) -> bool:
    if type(value) is bool:
        return value
    raise _InvalidField(f"expected true or false, got {_json_type(value)}")


def _structure_id(value: Any, _: Any) -> MessageId:
    if type(value) is str or type(value) is int:
        return value
    raise _InvalidField(f"expected a string or an integer, got {_json_type(value)}")


def _structure_optional_id(value: Any, _: Any) -> MessageId | None:
    return None if value is None else _structure_id(value, None)


_RENAMES: Final[Mapping[type[Any], Mapping[str, str]]] = {
    TransitionFrame: {"from_state": "from", "to_state": "to"},
}


def _make_converter(*, strict: bool) -> cattrs.Converter:
    """``strict`` (decoding clients): unknown fields are errors. The client-side converter is
    lenient about extra fields so that a newer server can add some without breaking it."""
    conv = cattrs.Converter(forbid_extra_keys=strict, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_func(lambda t: t == MessageId, _structure_id)
    conv.register_structure_hook_func(lambda t: t == (MessageId | None), _structure_optional_id)
    for cls in (*CLIENT_TYPES.values(), *SERVER_TYPES.values(), EndpointState, Snapshot):
        renames: dict[str, Any] = {
            name: override(rename=wire) for name, wire in _RENAMES.get(cls, {}).items()
        }
        conv.register_structure_hook(
            cls,
            make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=strict, **renames),
        )
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **renames))
    tag: Callable[[type[Any]], str] = lambda cls: cls.TYPE  # noqa: E731
    configure_tagged_union(ClientMessage, conv, tag_generator=tag, tag_name="type")
    configure_tagged_union(ServerFrame, conv, tag_generator=tag, tag_name="type")
    return conv


_strict = _make_converter(strict=True)
_lenient = _make_converter(strict=False)


def _field_problems(exc: BaseException, path: str = "") -> list[str]:
    """Flatten a cattrs validation error into ``"field: problem"`` lines without values."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        lines: list[str] = []
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            name = getattr(note, "name", None)
            index = getattr(note, "index", None)
            here = f"{path}.{name}" if name is not None else f"{path}[{index!r}]"
            lines.extend(_field_problems(sub, here))
        for sub in without:
            lines.extend(_field_problems(sub, path))
        return lines
    where = path.lstrip(".")
    if isinstance(exc, _InvalidField):
        field = f"{where}.{exc.field}" if where and exc.field else (exc.field or where)
        return [f"{field}: {exc.text}" if field else exc.text]
    if isinstance(exc, ForbiddenExtraKeysError):
        # Key names are the client's own text: shorten them so an error stays small.
        names = sorted(_shorten(str(k)) for k in exc.extra_fields)
        shown = ", ".join(repr(n) for n in names[:5]) + (", …" if len(names) > 5 else "")
        prefix = f"{where}: " if where else ""
        return [f"{prefix}unknown field{'s' if len(names) > 1 else ''} {shown}"]
    if isinstance(exc, KeyError):
        return [f"{where}: required field missing" if where else "required field missing"]
    return [f"{where}: invalid value" if where else "invalid value"]


def _shorten(text: str, limit: int = 40) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicated "type" or "id" would let two parsers (ours and a proxy's) disagree about
    # what a frame means; refuse the ambiguity.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key in object")
        result[key] = value
    return result


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        # JSONDecodeError's own message quotes no content, only the position.
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        # NaN/Infinity, duplicate keys, integers beyond Python's digit limit.
        reason = str(exc) if "JSON" in str(exc) or "duplicate" in str(exc) else "bad number"
        raise ProtocolError(ErrorCode.BAD_JSON, f"invalid JSON: {reason}") from None


def _recover_id(data: Mapping[str, Any]) -> MessageId | None:
    value = data.get("id")
    if type(value) is int and -_JSON_SAFE_INT <= value <= _JSON_SAFE_INT:
        return value
    if type(value) is str and value.isprintable() and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    return None


def peek_id(text: str) -> MessageId | None:
    """The ``id`` of a frame if it is a JSON object with a well-formed id, else ``None``.

    Used to echo the id when a frame is refused without being executed (rate limiting).
    """
    try:
        data = _loads(text)
    except ProtocolError:
        return None
    return _recover_id(data) if isinstance(data, dict) else None


def decode_client_message(text: str) -> ClientMessage:
    """Parse one text frame from a client; raises :class:`ProtocolError` on any problem."""
    data = _loads(text)
    if not isinstance(data, dict):
        raise ProtocolError(
            ErrorCode.NOT_OBJECT, f"a frame must be a JSON object, got {_json_type(data)}"
        )
    msg_id = _recover_id(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            'missing "type"'
            if kind is None
            else f'"type" must be a string, got {_json_type(kind)}',
            id=msg_id,
        )
    if kind not in CLIENT_TYPES:
        expected = ", ".join(sorted(CLIENT_TYPES))
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            # The value is not quoted back: like every other value, it might be a secret
            # sent to the wrong place.
            f"unknown message type (expected one of: {expected})",
            id=msg_id,
        )
    try:
        msg: ClientMessage = _strict.structure(data, ClientMessage)  # type: ignore[arg-type]
    except (ClassValidationError, _InvalidField, ValueError, TypeError, KeyError) as exc:
        problems = _field_problems(exc) or ["invalid message"]
        raise ProtocolError(
            ErrorCode.INVALID, f"invalid {kind} message: " + "; ".join(problems), id=msg_id
        ) from None
    return msg


def decode_server_frame(text: str | bytes) -> ServerFrame | UnknownFrame:
    """Parse one frame from a server (client side). Extra fields are tolerated and unknown
    types come back as :class:`UnknownFrame`, so an older client keeps working against a
    newer server. Raises :class:`ProtocolError` for frames that are not v1 at all."""
    if isinstance(text, bytes):
        raise ProtocolError(ErrorCode.BINARY_FRAME, "the server sent a binary frame")
    data = _loads(text)
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.NOT_OBJECT, "the server sent a frame that is not an object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, 'the server sent a frame without "type"')
    if kind not in SERVER_TYPES:
        return UnknownFrame(type=kind, data=data)
    try:
        frame: ServerFrame = _lenient.structure(data, ServerFrame)  # type: ignore[arg-type]
    except (ClassValidationError, _InvalidField, ValueError, TypeError, KeyError) as exc:
        problems = _field_problems(exc) or ["invalid frame"]
        raise ProtocolError(
            ErrorCode.INVALID, f"invalid {kind} frame from server: " + "; ".join(problems)
        ) from None
    return frame


def to_dict(message: ClientMessage | ServerFrame | UnknownFrame) -> dict[str, Any]:
    """The JSON-ready dict of a message, ``"type"`` tag included."""
    if isinstance(message, UnknownFrame):
        return dict(message.data)
    union: Any = ServerFrame if type(message).TYPE in SERVER_TYPES else ClientMessage
    data: dict[str, Any] = _strict.unstructure(message, union)
    return {"type": data.pop("type"), **data}  # the tag first: easier to read in a log


def encode(message: ClientMessage | ServerFrame | UnknownFrame) -> str:
    """Serialise a message to one compact JSON text frame.

    ``allow_nan=False`` makes a non-finite number a bug that fails loudly here rather than
    a frame that strict JSON parsers (browsers, jq) reject.
    """
    return json.dumps(to_dict(message), allow_nan=False, separators=(",", ":"))


# --- events and statistics -> frames --------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> float | None:
    """A JSON-safe float: ``None`` for missing or non-finite values, rounded for compactness."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return round(float(value), digits)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _timer(until: float | None, now: float, wall: float) -> tuple[float | None, float | None, bool]:
    """``(open_until_in, open_until_wall, until_reset)`` for a Trio-clock deadline."""
    if until is None:
        return None, None, False
    if math.isinf(until):
        return None, None, True
    remaining = max(0.0, until - now)
    return _num(remaining), _num(wall + remaining), False


def _safe_url(url: str) -> str:
    """The base URL without credentials, query or fragment (keys hide there), redacted."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
        cleaned = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        cleaned = "<unparseable url>"
    return redact(cleaned)


def _clean(text: str | None) -> str | None:
    return None if text is None else redact(text)


def endpoint_state(stats: Any, now: float, wall: float) -> EndpointState:
    """Build the wire form of one :class:`~rakka_trio.EndpointStatistics` at Trio time
    ``now`` / Unix time ``wall``.

    Optional subsystem figures are read from the statistics object when present
    (``in_flight``, ``queue_depth``, ``limiter_utilization``, ``latency_p50/p95/p99``), so
    they appear on the wire as soon as the supervisor reports them.
    """
    breaker = stats.breaker
    until_in, until_wall, until_reset = _timer(breaker.open_until, now, wall)
    state = breaker.state.value
    opened_at = breaker.opened_at
    open_for = (
        _num(max(0.0, now - opened_at))
        if opened_at is not None and state in ("open", "half_open", "forced_open")
        else None
    )
    return EndpointState(
        name=stats.name,
        provider=stats.provider,
        base_url=_safe_url(stats.base_url),
        state=state,
        consecutive_failures=breaker.consecutive_failures,
        failures=breaker.failures,
        successes=breaker.successes,
        rejected=breaker.rejected,
        trips=breaker.trips,
        failure_rate=_num(breaker.failure_rate, 4),
        calls_in_window=breaker.calls_in_window,
        failures_in_window=breaker.failures_in_window,
        open_for=open_for,
        open_until_in=until_in,
        open_until_wall=until_wall,
        until_reset=until_reset,
        forced_reason=_clean(breaker.forced_reason),
        forced_by=_clean(breaker.forced_by),
        probes_in_flight=breaker.probes_in_flight,
        in_flight=_count(getattr(stats, "in_flight", None)),
        queue_depth=_count(getattr(stats, "queue_depth", None)),
        limiter_utilization=_num(getattr(stats, "limiter_utilization", None), 4),
        latency_p50=_num(getattr(stats, "latency_p50", None), 4),
        latency_p95=_num(getattr(stats, "latency_p95", None), 4),
        latency_p99=_num(getattr(stats, "latency_p99", None), 4),
    )


def snapshot_from_statistics(statistics: Any, *, wall: float | None = None) -> Snapshot:
    """Build a :class:`Snapshot` from a :class:`~rakka_trio.SupervisorStatistics`.

    ``wall`` is the Unix time matching ``statistics.at`` (default: now).
    """
    wall = time.time() if wall is None else wall
    now = statistics.at
    return Snapshot(
        node_id=statistics.node_id,
        wall=_num(wall) or 0.0,
        endpoints=[endpoint_state(s, now, wall) for s in statistics.endpoints.values()],
    )


def frame_from_event(event: Event) -> ServerFrame | None:
    """The wire frame for a supervisor event (``None`` for event kinds not forwarded)."""
    wall = _num(event.wall) or 0.0
    if isinstance(event, Transition):
        until_in, until_wall, until_reset = _timer(event.open_until, event.at, event.wall)
        return TransitionFrame(
            wall=wall,
            endpoint=event.endpoint,
            from_state=event.from_state.value,
            to_state=event.to_state.value,
            cause=event.cause,
            consecutive_failures=event.consecutive_failures,
            failure_rate=_num(event.failure_rate, 4),
            calls_in_window=event.calls_in_window,
            trips=event.trips,
            open_until_in=until_in,
            open_until_wall=until_wall,
            until_reset=until_reset,
            actor=_clean(event.actor),
            reason=_clean(event.reason),
        )
    if isinstance(event, Command):
        return CommandFrame(
            wall=wall,
            endpoint=event.endpoint,
            command=event.command,
            actor=redact(event.actor),
            reason=_clean(event.reason),
            duration=_num(event.duration),
        )
    if isinstance(event, Stats):
        snap = snapshot_from_statistics(event.statistics, wall=event.wall)
        return StatsFrame(node_id=snap.node_id, wall=snap.wall, endpoints=snap.endpoints)
    if isinstance(event, Lagged):
        return LaggedFrame(wall=wall, dropped=event.dropped)
    if isinstance(event, EndpointAdded):
        return EndpointAddedFrame(wall=wall, endpoint=event.endpoint)
    if isinstance(event, EndpointRemoved):
        return EndpointRemovedFrame(wall=wall, endpoint=event.endpoint)
    if isinstance(event, TaskRestarted):
        return TaskRestartedFrame(
            wall=wall,
            task=event.task,
            error=redact(event.error),
            crashes=event.crashes,
            backoff=_num(event.backoff) or 0.0,
        )
    return None
