"""The private cattrs converter that loads and dumps configuration.

Structuring is strict (unknown keys, wrong types and bad values are all errors) and exhaustive:
every problem in the whole document is collected with its path (``$.endpoints[1].breaker.
open_duration``) and raised as one :class:`~rakka_trio.ConfigError`.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import cattrs

from .._credentials import (
    CallableCredential,
    Credential,
    EnvCredential,
    FileCredential,
    StaticCredential,
    credential_from_raw,
)
from .._errors import ConfigError
from ._validators import MAX_INTEGER

__all__ = ["structure_config", "unstructure_config"]

T = TypeVar("T")


class _Problems(Exception):
    """Internal: problems found below one node, paths relative to that node."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _join(prefix: str, sub: str) -> str:
    if sub in ("", "$"):
        return prefix
    if sub.startswith("["):
        return prefix + sub
    return f"{prefix}.{sub}"


def _config_problems(exc: ConfigError, prefix: str) -> list[tuple[str, str]]:
    return [(_join(prefix, path), msg) for path, msg in exc.errors]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional_float(tp: Any) -> bool:
    return tp is float or (isinstance(tp, types.UnionType) and float in typing.get_args(tp))


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def structure_attrs_factory(cls: type) -> Callable[[Any, type], Any]:
        fields = attrs.fields_dict(cls)

        def structure(data: Any, _: type) -> Any:
            if isinstance(data, cls):
                return data
            if not isinstance(data, Mapping):
                raise _Problems([("", f"must be a table, got {type(data).__name__}")])
            problems: list[tuple[str, str]] = []
            for key in data:
                if key not in fields:
                    close = difflib.get_close_matches(str(key), list(fields), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    problems.append((str(key), f"unknown field{hint}"))
            kwargs: dict[str, Any] = {}
            hints = _hints(cls)
            for name, field in fields.items():
                if name not in data:
                    if field.default is attrs.NOTHING:
                        problems.append((name, "is required"))
                    continue
                try:
                    value = conv.structure(data[name], hints[name])
                except _Problems as exc:
                    problems.extend((_join(name, p), m) for p, m in exc.problems)
                    continue
                except ConfigError as exc:
                    problems.extend(_config_problems(exc, name))
                    continue
                except (ValueError, TypeError) as exc:
                    problems.append((name, str(exc)))
                    continue
                if field.converter is not None:
                    try:
                        value = cast(Callable[[Any], Any], field.converter)(value)
                    except ConfigError as exc:
                        problems.extend(_config_problems(exc, name))
                        continue
                if field.validator is not None:
                    try:
                        field.validator(None, field, value)
                    except ConfigError as exc:
                        problems.extend(
                            (name if p == field.name else _join(name, p), m) for p, m in exc.errors
                        )
                        continue
                kwargs[name] = value
            if problems:
                # Cross-field rules run on construction, which field problems prevent: let
                # the class check what it can on the raw data so nothing goes unreported.
                raw_problems = getattr(cls, "_raw_problems", None)
                if raw_problems is not None:
                    seen = {path for path, _ in problems}
                    problems.extend(p for p in raw_problems(data) if p[0] not in seen)
                raise _Problems(problems)
            try:
                return cls(**kwargs)
            except ConfigError as exc:
                raise _Problems(exc.errors) from None

        return structure

    conv.register_structure_hook_factory(attrs.has, structure_attrs_factory)

    def structure_list(data: Any, tp: Any) -> list[Any]:
        if isinstance(data, str | bytes | Mapping) or not isinstance(data, list | tuple):
            raise _Problems([("", f"must be a list, got {type(data).__name__}")])
        (item_type,) = typing.get_args(tp) or (Any,)
        out: list[Any] = []
        problems: list[tuple[str, str]] = []
        for i, item in enumerate(data):
            try:
                out.append(item if item_type is Any else conv.structure(item, item_type))
            except _Problems as exc:
                problems.extend((_join(f"[{i}]", p), m) for p, m in exc.problems)
        if problems:
            raise _Problems(problems)
        return out

    list_type: Any = list
    conv.register_structure_hook_func(
        lambda tp: typing.get_origin(tp) is list_type or tp is list_type, structure_list
    )

    # Leaves pass through unchanged: the attrs validators give the readable messages. Only
    # integers written where a float belongs are widened (TOML `open_duration = 30`).
    def passthrough(data: Any, tp: Any) -> Any:
        if (
            _is_optional_float(tp)
            and isinstance(data, int)
            and not isinstance(data, bool)
            and abs(data) <= MAX_INTEGER  # larger ones stay integers: the validator says why
        ):
            return float(data)
        return data

    for leaf in (int, float, str, bool):
        conv.register_structure_hook(leaf, passthrough)
    literal: Any = typing.Literal
    mappings: tuple[Any, ...] = (Mapping, dict)
    conv.register_structure_hook_func(lambda tp: typing.get_origin(tp) is literal, passthrough)
    conv.register_structure_hook_func(
        lambda tp: typing.get_origin(tp) in mappings or tp in mappings, passthrough
    )

    def structure_credential(data: Any, _: Any) -> Credential | None:
        if data is None:
            return None
        try:
            return credential_from_raw(data)
        except ValueError as exc:
            raise _Problems([("", str(exc))]) from None

    def is_union(tp: Any) -> bool:
        return typing.get_origin(tp) in (typing.Union, types.UnionType)

    def structure_union(data: Any, tp: Any) -> Any:
        args = typing.get_args(tp)
        if any(a in (StaticCredential, EnvCredential) for a in args):
            return structure_credential(data, tp)
        return passthrough(data, tp)

    conv.register_structure_hook_func(is_union, structure_union)

    def unstructure_credential(cred: Any) -> Any:
        if isinstance(cred, EnvCredential):
            return {"env": cred.var}
        if isinstance(cred, FileCredential):
            return {"file": cred.path}
        if isinstance(cred, StaticCredential):
            return {"value": "***"}
        if isinstance(cred, CallableCredential):
            return {"callable": getattr(cred.fetch, "__qualname__", "<callable>")}
        return None

    for cred_type in (EnvCredential, FileCredential, StaticCredential, CallableCredential):
        conv.register_unstructure_hook(cred_type, unstructure_credential)
    return conv


_converter = _make_converter()


def structure_config(data: Mapping[str, Any], cls: type[T]) -> T:
    """Structure ``data`` into ``cls`` or raise :class:`ConfigError` listing every problem."""
    try:
        return _converter.structure(data, cls)
    except _Problems as exc:
        raise ConfigError([(_join("$", p), m) for p, m in exc.problems]) from None


def unstructure_config(obj: Any) -> dict[str, Any]:
    """Plain data for a config object; credential values are masked."""
    result = _converter.unstructure(obj)
    assert isinstance(result, dict)
    return result
