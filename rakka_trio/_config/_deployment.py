"""``DeploymentConfig``: a named group of endpoints and how requests are routed across them.

Kept apart from the endpoint classes so the routing options can grow without crowding them;
its validators raise :class:`ConfigError` naming the field, like the rest of ``_config``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from .._errors import ConfigError

__all__ = ["STRATEGIES", "DeploymentConfig", "Strategy"]

Strategy = Literal["ordered", "weighted", "least_busy", "latency", "headroom"]
STRATEGIES: tuple[Strategy, ...] = ("ordered", "weighted", "least_busy", "latency", "headroom")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def _fail(attribute: attrs.Attribute[Any], message: str) -> None:
    raise ConfigError([(attribute.name, message)])


def _name(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        _fail(
            attribute,
            f"must be 1-128 characters of letters, digits, '.', '_' or '-'; got {value!r}",
        )


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise ConfigError([("$", f"must be a list, got {type(value).__name__}")])
    return list(value)


def _names(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError([(f"{attribute.name}[{i}]", f"must be a string, got {item!r}")])


def _timeout(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(attribute, f"must be a finite number, got {value!r}")
    if not value > 0:
        _fail(attribute, f"must be > 0, got {value!r}")


def _bool(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        _fail(attribute, f"must be true or false, got {value!r}")


def _strategy(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in STRATEGIES:
        _fail(attribute, f"must be one of {', '.join(STRATEGIES)}; got {value!r}")


def _as_weights(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError([("$", f"must be a table, got {type(value).__name__}")])
    return dict(value)


def _weights(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    for name, weight in value.items():
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigError(
                [(f"{attribute.name}.{name}", f"must be a finite number >= 0, got {weight!r}")]
            )


def _seed(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        _fail(attribute, f"must be an integer, got {value!r}")


@attrs.frozen(kw_only=True)
class DeploymentConfig:
    """A named group of endpoints that serve the same requests (see docs/engine.md).

    ``strategy`` picks the endpoint for each request: ``ordered`` (the default: the first of
    ``endpoints`` that can serve, the rest as a fallback chain), ``weighted`` (at random in
    proportion to ``weights``, a table of endpoint name to weight; unlisted endpoints weigh 1),
    ``least_busy`` (fewest requests in flight or queued), ``latency`` (lowest recent time to
    first token, trying another endpoint now and then so a recovered one gets a chance) or
    ``headroom`` (most rate-limit capacity left). Every strategy skips endpoints that cannot
    serve right now (breaker open, rate-limit key paused or short, queue full, budget spent)
    and moves a request that meets a 429, overload or a timeout before the first byte to
    another endpoint at once; it retries on the same endpoint only when no other can serve.
    With ``failover_on_first_error`` any error that counts against the breaker moves the
    request on too, without retries on the failing endpoint.

    ``timeout`` is the default deadline in seconds of a request through the deployment
    (queueing, fallbacks and waiting included). With ``wait_for_recovery``, a request that
    finds every endpoint's breaker open waits for the first one to recover instead of failing
    (never past its deadline). ``seed`` makes the random choices (``weighted``, and the
    ``latency`` strategy's exploration) reproducible.
    """

    name: str = attrs.field(validator=_name)
    endpoints: list[str] = attrs.field(converter=_as_list, validator=_names)
    strategy: Strategy = attrs.field(default="ordered", validator=_strategy)
    weights: Mapping[str, float] | None = attrs.field(
        default=None, converter=_as_weights, validator=_weights
    )
    failover_on_first_error: bool = attrs.field(default=False, validator=_bool)
    timeout: float | None = attrs.field(default=None, validator=_timeout)
    wait_for_recovery: bool = attrs.field(default=False, validator=_bool)
    seed: int | None = attrs.field(default=None, validator=_seed)

    def __attrs_post_init__(self) -> None:
        errors: list[tuple[str, str]] = []
        if not self.endpoints:
            errors.append(("endpoints", "must list at least one endpoint"))
        if len(set(self.endpoints)) != len(self.endpoints):
            errors.append(("endpoints", "must not list an endpoint twice"))
        if self.weights is not None:
            for name in self.weights:
                if name not in self.endpoints:
                    errors.append((f"weights.{name}", "is not one of the deployment's endpoints"))
            if self.endpoints and not any(self.weight(e) > 0 for e in self.endpoints):
                errors.append(("weights", "must give at least one endpoint a weight above 0"))
        if errors:
            raise ConfigError(errors)

    def weight(self, endpoint: str) -> float:
        """The ``weighted`` strategy's weight of ``endpoint`` (1 unless ``weights`` says)."""
        if self.weights is None:
            return 1.0
        return float(self.weights.get(endpoint, 1.0))
