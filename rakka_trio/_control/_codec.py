"""Encoding and strict decoding of protocol messages.

Decoding what a client sends is strict: unknown fields, wrong JSON types, non-finite numbers,
duplicate keys and control characters in text fields are all refused with a
:class:`ProtocolError` whose ``code`` and ``message`` go back to the client in an ``error``
frame. Messages never quote the offending *value* (only field names and JSON type names), so
a token pasted into the wrong field is never echoed back or logged.
"""

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from ._fleet_schema import ADDITIVE_FIELDS
from ._incident import FallbackState
from ._schema import (
    _JSON_SAFE_INT,
    CLIENT_TYPES,
    MAX_ID_LENGTH,
    SERVER_TYPES,
    ClientMessage,
    CommandFrame,
    EndpointState,
    ErrorCode,
    HistoryFrame,
    MessageId,
    ProtocolError,
    ServerFrame,
    Snapshot,
    TransitionFrame,
    UnknownFrame,
    _InvalidField,
    _json_type,
)

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
    FallbackState: {"from_endpoint": "from"},
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
    tag: Callable[[type[Any]], str] = lambda cls: cls.TYPE  # noqa: E731

    def register(cls: type[Any]) -> None:
        renames: dict[str, Any] = {
            name: override(rename=wire) for name, wire in _RENAMES.get(cls, {}).items()
        }
        # The fleet's additions appear only when set: node-scope frames stay exactly v1.
        renames.update(
            (a.name, override(omit_if_default=True))
            for a in attrs.fields(cls)
            if a.name in ADDITIVE_FIELDS
        )
        conv.register_structure_hook(
            cls,
            make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=strict, **renames),
        )
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **renames))

    # Inner classes first: a class's generated hook captures those of its fields' classes.
    for cls in (FallbackState, EndpointState, Snapshot, TransitionFrame, CommandFrame):
        register(cls)
    configure_tagged_union(HistoryFrame, conv, tag_generator=tag, tag_name="type")
    for cls in (*CLIENT_TYPES.values(), *SERVER_TYPES.values()):
        register(cls)
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


MAX_JSON_DEPTH: Final = 64  # far beyond any protocol message; deeper is refused
# A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_NESTING: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(text: str) -> bool:
    """Whether arrays/objects nest deeper than :data:`MAX_JSON_DEPTH`. Checked before
    parsing so the answer does not depend on the interpreter's recursion limit."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the usual frame: too few brackets to matter, no scan
    depth = 0
    for match in _NESTING.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _loads(text: str) -> Any:
    if _too_deep(text):
        raise ProtocolError(ErrorCode.BAD_JSON, "invalid JSON: nested too deeply")
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
