"""Secrets and the places credentials come from.

A :class:`Secret` never shows its value: not in ``repr``, ``str``, f-strings, pickles or logs.
Credential sources are frozen config objects; :meth:`resolve` fetches the current value (a file
or async callable is consulted again on every rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

from ._errors import ConfigError
from ._redact import register_secret_value

__all__ = [
    "CallableCredential",
    "Credential",
    "EnvCredential",
    "FileCredential",
    "Secret",
    "StaticCredential",
]


class Secret:
    """A credential value that refuses to be shown.

    Use :meth:`get_secret_value` at the one place the value is needed (building a request
    header). ``fingerprint`` is a short, stable, non-reversible id suitable for rate-limit keys
    and logs.
    """

    __slots__ = ("__value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self.__value = value
        register_secret_value(value)

    def get_secret_value(self) -> str:
        """Return the real value. Never log the result."""
        return self.__value

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the value's SHA-256: identifies a key without revealing it."""
        return hashlib.sha256(self.__value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self.fingerprint))

    def __bool__(self) -> bool:
        return bool(self.__value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")


def _to_secret(value: Secret | str) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


@attrs.frozen
class StaticCredential:
    """A credential given directly (tests, local servers). Prefer env or file sources in
    production."""

    value: Secret = attrs.field(converter=_to_secret)

    async def resolve(self) -> Secret:
        """Return the value."""
        return self.value


def _env_var_name(_inst: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError([("var", "environment variable name must be a non-empty string")])


@attrs.frozen
class EnvCredential:
    """A credential read from an environment variable each time it is resolved."""

    var: str = attrs.field(validator=_env_var_name)

    async def resolve(self) -> Secret:
        """Read the variable now. Raises :class:`ConfigError` when it is unset or empty."""
        value = os.environ.get(self.var, "")
        if not value:
            raise ConfigError([("credential.env", f"environment variable {self.var} is not set")])
        return Secret(value)


def _fspath(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


@attrs.frozen
class FileCredential:
    """A credential read from a file (trailing whitespace stripped), re-read on rotation."""

    path: str = attrs.field(converter=_fspath)

    async def resolve(self) -> Secret:
        """Read the file now, off the event loop."""
        try:
            text = await trio.to_thread.run_sync(Path(self.path).read_text, "utf-8")
        except OSError as exc:
            raise ConfigError(
                [("credential.file", f"cannot read {self.path}: {exc.strerror}")]
            ) from None
        value = text.strip()
        if not value:
            raise ConfigError([("credential.file", f"{self.path} is empty")])
        return Secret(value)


@attrs.frozen
class CallableCredential:
    """A credential produced by an async callable (token refresh); called on every rotation."""

    fetch: Callable[[], Awaitable[str | Secret]]

    async def resolve(self) -> Secret:
        """Await the callable and wrap its result."""
        return _to_secret(await self.fetch())


Credential = StaticCredential | EnvCredential | FileCredential | CallableCredential
"""Any credential source accepted by :class:`~rakka_trio.EndpointConfig`."""


def credential_from_raw(raw: Any) -> Credential:
    """Build a credential from its TOML/dict form: ``{env=...}``, ``{file=...}`` or
    ``{value=...}``."""
    if isinstance(raw, Credential):
        return raw
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(
            "credential must be a table with exactly one of: env, file, value"
            ' (for example {env = "OPENAI_API_KEY"})'
        )
    ((kind, value),) = raw.items()
    if not isinstance(value, str) or not value:
        raise ValueError(f"credential.{kind} must be a non-empty string")
    if kind == "env":
        return EnvCredential(value)
    if kind == "file":
        return FileCredential(value)
    if kind == "value":
        return StaticCredential(value=value)
    raise ValueError(f"unknown credential kind {kind!r} (expected env, file or value)")
