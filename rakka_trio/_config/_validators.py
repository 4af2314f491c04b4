"""Field validators of the config classes.

Each raises :class:`~rakka_trio.ConfigError` naming the field, so direct construction and
loading read the same. They ignore the instance so the loader can run them field by field to
report every problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._credentials import Credential
from .._errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

#: The largest integer any numeric field accepts (the largest a float holds exactly).
MAX_INTEGER = 2**53


def show(value: Any) -> str:
    """``repr(value)`` for a message, kept short: a huge integer reads as its size (``repr``
    refuses integers over 4,300 digits), anything else is cut at 80 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        digits = value.bit_length() * 30103 // 100000 + 1  # log10(2) ~ 0.30103
        return f"an integer of about {digits} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(attribute: attrs.Attribute[Any], message: str) -> None:
    raise ConfigError([(attribute.name, message)])


def _number(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    integer: bool = False,
    optional: bool = False,
) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            if not optional:
                _fail(attribute, "is required")
            return
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            _fail(
                attribute, f"must be {'an integer' if integer else 'a number'}, got {show(value)}"
            )
        if isinstance(value, int) and abs(value) > MAX_INTEGER:
            # TOML integers have no size limit; past 2**53 they are not even exact as floats.
            _fail(attribute, f"must be at most {MAX_INTEGER} in size, got {show(value)}")
        if not math.isfinite(value):
            _fail(attribute, f"must be finite, got {show(value)}")
        if gt is not None and not value > gt:
            _fail(attribute, f"must be > {gt}, got {show(value)}")
        if ge is not None and not value >= ge:
            _fail(attribute, f"must be >= {ge}, got {show(value)}")
        if le is not None and not value <= le:
            _fail(attribute, f"must be <= {le}, got {show(value)}")

    return check


def _choice(*options: str, among: Callable[[], tuple[str, ...]] | None = None) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        allowed = among() if among is not None else options  # among: looked up at each check
        if value not in allowed:
            _fail(attribute, f"must be one of {', '.join(allowed)}; got {show(value)}")

    return check


def _name(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        _fail(
            attribute,
            f"must be 1-128 characters of letters, digits, '.', '_' or '-'; got {show(value)}",
        )


def _optional_name(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _name(_inst, attribute, value)


def _bool(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        _fail(attribute, f"must be true or false, got {show(value)}")


def _instance(kind: type, what: str) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, kind):
            _fail(attribute, f"must be {what}, got {type(value).__name__}")

    return check


def _optional_str(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        _fail(attribute, f"must be a non-empty string, got {show(value)}")


def _url(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        _fail(attribute, f"must be an http:// or https:// URL, got {show(value)}")


def _headers(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        _fail(attribute, "must be a table of string header names to string values")


def _credential(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Credential):
        _fail(attribute, "must be a credential source (env, file, value or callable)")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise ConfigError([("$", f"must be a list, got {type(value).__name__}")])
    return list(value)


def _str_items(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError([(f"{attribute.name}[{i}]", f"must be a string, got {item!r}")])


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError([("$", f"must be a table, got {type(value).__name__}")])
    return dict(value)
