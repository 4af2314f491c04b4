"""What an admission costs: the limit dimensions, :class:`Cost` and model families."""

from __future__ import annotations

import logging
import re
from typing import Any, Final, Protocol

import attrs

log = logging.getLogger("rakka_trio.limiter")

# Dimensions, in the order of Cost._v and of every per-dimension array.
REQUESTS: Final = 0
TOKENS: Final = 1
INPUT_TOKENS: Final = 2
OUTPUT_TOKENS: Final = 3
DIM_NAMES: Final = ("requests", "tokens", "input_tokens", "output_tokens")
LIMIT_FIELDS: Final = (
    "requests_per_minute",
    "tokens_per_minute",
    "input_tokens_per_minute",
    "output_tokens_per_minute",
)
BURST_FIELDS: Final = (
    "requests_burst",
    "tokens_burst",
    "input_tokens_burst",
    "output_tokens_burst",
)

# Float slack when comparing a bucket level with a cost: tat arithmetic on large clock values
# leaves rounding residue far below any meaningful wait.
EPS: Final = 1e-9

Vector = tuple[int, int, int, int]


# --- cost -------------------------------------------------------------------------------------


def _count(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Cost.{attribute.name} must be an integer >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Cost:
    """What one admission spends: ``requests`` (usually 1), ``input_tokens`` and
    ``output_tokens``.

    Tokens-per-minute limits count ``input_tokens + output_tokens`` (:attr:`tokens`); input- and
    output-token limits count their own part. For a :meth:`LimiterHandle.reserve` estimate use
    the prompt's token estimate and the request's ``max_tokens``; settle with the provider's
    reported usage.
    """

    requests: int = attrs.field(default=1, validator=_count)
    input_tokens: int = attrs.field(default=0, validator=_count)
    output_tokens: int = attrs.field(default=0, validator=_count)
    # The per-dimension vector the hot path reads (one attribute load instead of four).
    _v: Vector = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        vector = (
            self.requests,
            self.input_tokens + self.output_tokens,
            self.input_tokens,
            self.output_tokens,
        )
        object.__setattr__(self, "_v", vector)

    @property
    def tokens(self) -> int:
        """Input plus output tokens: what a tokens-per-minute limit counts."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_usage(cls, usage: UsageLike, *, requests: int = 1) -> Cost:
        """The cost of a finished call from its reported usage (e.g. :class:`Usage`)."""
        return cls(
            requests=requests,
            input_tokens=max(0, int(usage.input_tokens)),
            output_tokens=max(0, int(usage.output_tokens)),
        )


class UsageLike(Protocol):
    """Anything reporting ``input_tokens`` and ``output_tokens`` (such as :class:`Usage`)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


ONE_REQUEST: Final = Cost()


# --- model families ---------------------------------------------------------------------------

# Dated or versioned snapshots share their family's limits: gpt-4o-2024-08-06 -> gpt-4o,
# claude-3-5-sonnet-20241022 -> claude-3-5-sonnet, gemini-1.5-pro-002 -> gemini-1.5-pro.
_FAMILY_SUFFIX = re.compile(
    r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}|latest|v\d+(?::\d+)?))+$", re.IGNORECASE
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/\-]")


def model_family(model: str | None) -> str:
    """The rate-limit family of a model name: its dated/versioned suffixes removed.

    ``None`` or an empty name is ``"default"``. The result is lowercase and safe to embed in a
    Redis key.
    """
    if not model:
        return "default"
    name = model.strip().lower().removeprefix("models/")
    family = _FAMILY_SUFFIX.sub("", name) or name
    return _UNSAFE.sub("_", family)[:100] or "default"
