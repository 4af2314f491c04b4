"""Control-plane protocol v1: the JSON messages spoken over the websocket.

Every frame is one JSON object with a ``"type"`` tag. Messages are frozen attrs classes;
the converter in :mod:`._codec` (un)structures them as a tagged union on ``"type"``.
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from .._errors import RakkaError
from ._fleet_schema import SCOPES, FleetSnapshot
from ._incident import DeploymentState, LimiterState, RecentState

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
    NO_FLEET: Final = "no_fleet"
    """Fleet scope was asked of a server without a fleet (its supervisor has no
    ``FleetConfig``); a ``hello`` asking for it is refused and closed."""
    FLEET_UNAVAILABLE: Final = "fleet_unavailable"
    """The server's link to the fleet (Redis) is down: the fleet command was not sent."""


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


def _check_scope(_: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and value not in SCOPES:
        raise _InvalidField('must be "node" or "fleet" (or absent: node)', attribute.name)


def _check_token(_: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and len(value) > MAX_TOKEN_LENGTH:
        raise _InvalidField(f"longer than {MAX_TOKEN_LENGTH} characters", attribute.name)


# --- client -> server -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hello:
    """First frame of every connection: ``{"type":"hello","token":…,"client":…}``.

    ``client`` names the program or person (it appears in the audit trail as
    ``client@address:port``); ``protocol``, when given, must be 1. ``scope`` ``"fleet"`` asks
    for the whole fleet's view (snapshot, stats and events of every node).
    """

    TYPE: ClassVar[str] = "hello"
    token: str | None = attrs.field(default=None, validator=_check_token, repr=False)
    client: str = attrs.field(default="unnamed", validator=_text(MAX_CLIENT_LENGTH))
    protocol: int | None = None
    scope: str | None = attrs.field(default=None, validator=_check_scope)


@attrs.frozen(kw_only=True)
class ForceOpen:
    """Operator command: hold ``endpoint``'s breaker open for ``duration`` s (null: until reset)."""

    TYPE: ClassVar[str] = "force_open"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    duration: float | None = attrs.field(default=None, validator=_check_duration)
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))
    scope: str | None = attrs.field(default=None, validator=_check_scope)


@attrs.frozen(kw_only=True)
class Reset:
    """Operator command: force-close ``endpoint``'s breaker and clear any forced state."""

    TYPE: ClassVar[str] = "reset"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))
    scope: str | None = attrs.field(default=None, validator=_check_scope)


@attrs.frozen(kw_only=True)
class Disable:
    """Operator command: bypass ``endpoint``'s breaker for ``duration`` s (null: until reset)."""

    TYPE: ClassVar[str] = "disable"
    id: MessageId = attrs.field(validator=_check_id)
    endpoint: str = attrs.field(validator=_text(MAX_ENDPOINT_LENGTH))
    duration: float | None = attrs.field(default=None, validator=_check_duration)
    reason: str | None = attrs.field(default=None, validator=_text(MAX_REASON_LENGTH))
    scope: str | None = attrs.field(default=None, validator=_check_scope)


@attrs.frozen(kw_only=True)
class GetState:
    """Ask for a fresh snapshot; answered by an ``ack`` carrying it (viewers may ask too)."""

    TYPE: ClassVar[str] = "get_state"
    id: MessageId = attrs.field(validator=_check_id)
    scope: str | None = attrs.field(default=None, validator=_check_scope)


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
    supervisor reports them. ``recent`` (rolling rates, error rate, sparkline series) and
    ``limiter`` (use by limit, a 429 pause) are null when not reported; ``recent`` also when
    nothing happened in the window's whole span.
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
    recent: RecentState | None = None
    limiter: LimiterState | None = None


@attrs.frozen(kw_only=True)
class Snapshot:
    """The state of every endpoint at ``wall`` (Unix time) on node ``node_id``, and of every
    deployment (null when the server reports none)."""

    node_id: str
    wall: float
    endpoints: list[EndpointState]
    deployments: list[DeploymentState] | None = None


@attrs.frozen(kw_only=True)
class WelcomeFrame:
    """Answer to a good ``hello``: the connection's ``role`` and a first snapshot.

    ``history`` holds the server's recent ``transition`` and ``command`` frames (the last
    200, oldest first) so a console that connects late shows what happened before it came;
    null from a server that keeps none. In fleet ``scope``, ``fleet`` holds every node's
    figures (``snapshot`` then lists no endpoints).
    """

    TYPE: ClassVar[str] = "welcome"
    protocol: int
    role: str
    server: str
    stats_interval: float
    snapshot: Snapshot
    history: "list[HistoryFrame] | None" = None
    scope: str = "node"
    fleet: FleetSnapshot | None = None


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
    node: str | None = None  # fleet scope: the node the breaker is on


@attrs.frozen(kw_only=True)
class CommandFrame:
    """Audit record of an operator command, sent to every subscriber. In fleet scope,
    ``node`` is where it was given and ``scope`` whether it acted on that node or the fleet."""

    TYPE: ClassVar[str] = "command"
    wall: float
    endpoint: str
    command: str
    actor: str
    reason: str | None
    duration: float | None
    node: str | None = None
    scope: str | None = None


HistoryFrame: TypeAlias = TransitionFrame | CommandFrame
"""What a welcome's ``history`` holds (each entry tagged with its ``"type"``)."""


@attrs.frozen(kw_only=True)
class StatsFrame:
    """Periodic snapshot (about once per ``stats_interval``), same fields as :class:`Snapshot`;
    in fleet ``scope`` the figures are in ``fleet`` (and ``endpoints`` is empty)."""

    TYPE: ClassVar[str] = "stats"
    node_id: str
    wall: float
    endpoints: list[EndpointState]
    deployments: list[DeploymentState] | None = None
    scope: str = "node"
    fleet: FleetSnapshot | None = None


@attrs.frozen(kw_only=True)
class AckFrame:
    """A command succeeded. ``state`` is the endpoint's breaker state afterwards;
    ``snapshot`` answers ``get_state``.

    A fleet-``scope`` command is acknowledged once every live node applied it or its ack
    timeout passed: ``nodes_acked`` applied it (``acks``: node -> Unix time it did;
    ``absent_on``: acked but without such an endpoint), ``nodes_missing`` did not answer in
    time (the override stays stored: they apply it when they come back). A fleet
    ``get_state`` is answered with ``fleet``.
    """

    TYPE: ClassVar[str] = "ack"
    id: MessageId
    command: str
    endpoint: str | None = None
    state: str | None = None
    snapshot: Snapshot | None = None
    scope: str | None = None
    command_id: str | None = None
    nodes_acked: list[str] | None = None
    nodes_missing: list[str] | None = None
    absent_on: list[str] | None = None
    acks: dict[str, float] | None = None
    fleet: FleetSnapshot | None = None


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
