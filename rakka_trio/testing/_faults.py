"""The scriptable fault plan: what can go wrong, and which requests it happens to.

A :class:`Fault` is a value describing one misbehaviour (a status storm, a 429 with a wait hint,
a stalled stream ...). :meth:`MockProvider.add_fault <rakka_trio.testing.MockProvider.add_fault>`
wraps it in a :class:`FaultRule` saying *when* it applies: to which route, how many times, in
which window of the Trio clock and with what probability. Rules match in insertion order; the
first active rule whose dice roll succeeds is applied to the request and its counter drops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Final, Literal

import attrs

from ._plan import ROUTES, Route

__all__ = ["Fault", "FaultKind", "FaultPlan", "FaultRule", "RouteSelector"]

FaultKind = Literal[
    "status",
    "rate_limited",
    "insufficient_quota",
    "unauthorized",
    "slow_first_byte",
    "stall",
    "truncate",
    "mid_stream_error",
    "connection_reset",
    "content_filter",
]
RouteSelector = Literal[
    "openai", "openai-responses", "anthropic", "gemini", "azure-openai", "openai-compatible", "*"
]
_SELECTORS: Final = (*ROUTES, "*")


def _check_delay(name: str, value: float, *, allow_inf: bool = False) -> float:
    value = float(value)
    if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class Fault:
    """One kind of misbehaviour. Build it with the named constructors, not directly.

    The fields are what the constructors set; which ones matter depends on ``kind``. Output
    position is counted in *chunks*: one chunk is one streamed piece of output (a text delta,
    a thinking delta or a piece of tool-call arguments). Frames that carry no output (the
    stream's opening events, block boundaries, pings) always go out before the first chunk.
    """

    kind: FaultKind
    status_code: int | None = None
    error_type: str | None = None
    code: str | None = None
    message: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    retry_after_ms: float | None = None
    http_date: bool = False
    delay: float = 0.0
    after_chunks: int = 0
    after_bytes: int = 0
    close_connection: bool = False
    stage: Literal["output", "prompt"] = "output"

    @staticmethod
    def status(
        status: int,
        *,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
    ) -> Fault:
        """Answer with HTTP ``status`` (4xx/5xx) and the route's real error body.

        ``error_type`` is in the provider's vocabulary (OpenAI ``error.type``, Anthropic
        ``error.type`` such as ``"overloaded_error"``, Gemini ``error.status`` such as
        ``"UNAVAILABLE"``); ``None`` picks the provider's usual type for the status. ``code``
        sets OpenAI's ``error.code``. ``headers`` are added to the response (for example
        ``{"x-should-retry": "false"}``); ``retry_after`` / ``retry_after_ms`` add the wait hints.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, got {status!r}")
        return Fault(
            kind="status",
            status_code=status,
            error_type=error_type,
            code=code,
            message=message,
            headers=tuple((str(k), str(v)) for k, v in (headers or {}).items()),
            retry_after=None if retry_after is None else _check_delay("retry_after", retry_after),
            retry_after_ms=None
            if retry_after_ms is None
            else _check_delay("retry_after_ms", retry_after_ms),
        )

    @staticmethod
    def rate_limited(
        retry_after: float | None = 1.0,
        *,
        retry_after_ms: float | None = None,
        http_date: bool = False,
        message: str | None = None,
    ) -> Fault:
        """HTTP 429 rate limit (OpenAI ``rate_limit_exceeded``, Anthropic ``rate_limit_error``,
        Gemini ``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` detail).

        ``retry_after`` seconds go in ``Retry-After`` (whole seconds as real providers send them;
        a fraction is written as a decimal so fast tests need not wait a full second), or as an
        HTTP-date when ``http_date`` is true. ``retry_after_ms`` adds ``retry-after-ms``. The
        rate-limit headers report zero requests remaining until the hinted time.
        """
        return Fault(
            kind="rate_limited",
            status_code=429,
            message=message,
            retry_after=None if retry_after is None else _check_delay("retry_after", retry_after),
            retry_after_ms=None
            if retry_after_ms is None
            else _check_delay("retry_after_ms", retry_after_ms),
            http_date=http_date,
        )

    @staticmethod
    def insufficient_quota() -> Fault:
        """The account is out of credit: OpenAI 429 ``insufficient_quota``, Anthropic 402
        ``billing_error``, Gemini 429 ``RESOURCE_EXHAUSTED`` quota message (Gemini has no
        distinct code for it)."""
        return Fault(kind="insufficient_quota", status_code=429)

    @staticmethod
    def unauthorized() -> Fault:
        """HTTP 401 with the provider's authentication error body (OpenAI ``invalid_api_key``,
        Anthropic ``authentication_error``, Gemini ``UNAUTHENTICATED``)."""
        return Fault(kind="unauthorized", status_code=401)

    @staticmethod
    def slow_first_byte(delay: float) -> Fault:
        """Wait ``delay`` seconds before the response's first byte, then answer normally."""
        return Fault(kind="slow_first_byte", delay=_check_delay("delay", delay))

    @staticmethod
    def stall(after_chunks: int, duration: float) -> Fault:
        """Stop sending for ``duration`` seconds (``math.inf``: until the client goes away)
        after ``after_chunks`` chunks, then finish normally. A non-streaming response stalls
        between its headers and its body."""
        return Fault(
            kind="stall",
            after_chunks=_check_count("after_chunks", after_chunks),
            delay=_check_delay("duration", duration, allow_inf=True),
        )

    @staticmethod
    def truncate(after_chunks: int, *, close_connection: bool = False) -> Fault:
        """End the stream after ``after_chunks`` chunks without the provider's terminal marker
        (no ``[DONE]``, ``message_stop``, ``response.completed`` or Gemini finish chunk).

        By default the HTTP body itself ends cleanly (final zero-length chunk) and the
        connection stays usable; ``close_connection=True`` closes the TCP connection instead, so
        the HTTP body is incomplete as well. A non-streaming response always sends part of its
        ``Content-Length`` and closes.
        """
        return Fault(
            kind="truncate",
            after_chunks=_check_count("after_chunks", after_chunks),
            close_connection=close_connection,
        )

    @staticmethod
    def mid_stream_error(
        after_chunks: int, error_type: str | None = None, message: str | None = None
    ) -> Fault:
        """After ``after_chunks`` chunks, send the provider's in-stream error and end the stream:
        OpenAI (and Azure, and the compatible server) ``data: {"error": ...}``, Responses
        ``error`` + ``response.failed``, Anthropic ``event: error``, Gemini
        ``data: {"error": ...}``.

        ``error_type`` is in the route's vocabulary (``"server_error"``, ``"overloaded_error"``,
        ``"UNAVAILABLE"`` ...); ``None`` picks the provider's commonest (OpenAI
        ``server_error``, Anthropic ``overloaded_error``, Gemini ``INTERNAL``). A non-streaming
        request gets the matching HTTP error status instead.
        """
        return Fault(
            kind="mid_stream_error",
            after_chunks=_check_count("after_chunks", after_chunks),
            error_type=error_type,
            message=message,
        )

    @staticmethod
    def connection_reset(after_bytes: int = 0) -> Fault:
        """Abort the TCP connection (RST: ``SO_LINGER`` 0, then close) once ``after_bytes``
        bytes of the response (status line and headers included) were written; 0 resets it
        before any byte of the response."""
        return Fault(kind="connection_reset", after_bytes=_check_count("after_bytes", after_bytes))

    @staticmethod
    def content_filter(
        after_chunks: int = 0, *, stage: Literal["output", "prompt"] = "output"
    ) -> Fault:
        """The provider's safety system stops the answer.

        ``stage="output"``: ``after_chunks`` chunks go out, then the answer ends as filtered:
        OpenAI ``finish_reason: "content_filter"`` (Azure: with ``violence`` marked filtered in
        ``content_filter_results``), Responses ``response.incomplete`` with reason
        ``content_filter``, Anthropic ``stop_reason: "refusal"``, Gemini ``finishReason: "SAFETY"``.
        ``stage="prompt"``: the prompt is refused: OpenAI/Responses HTTP 400 with code
        ``content_filter`` (Azure: with ``innererror`` ``ResponsibleAIPolicyViolation``, ``hate``
        filtered), Gemini ``promptFeedback.blockReason: "SAFETY"`` (HTTP 200, no candidates),
        Anthropic a ``refusal`` with no output, the compatible server a ``content_filter``
        finish with no output.
        """
        if stage not in ("output", "prompt"):
            raise ValueError("stage must be 'output' or 'prompt'")
        return Fault(
            kind="content_filter",
            after_chunks=_check_count("after_chunks", after_chunks),
            stage=stage,
        )


@attrs.define(eq=False)
class FaultRule:
    """A :class:`Fault` plus when it applies; returned by ``MockProvider.add_fault``.

    ``remaining`` counts down as the rule fires (``None``: unlimited), ``hits`` counts up.
    ``start``/``end`` bound the window on the Trio clock (``start <= now < end``).
    """

    route: RouteSelector
    fault: Fault
    remaining: int | None
    start: float | None
    end: float | None
    probability: float
    hits: int = 0

    def active(self, now: float) -> bool:
        """Whether the rule could fire at ``now`` (ignoring its probability)."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.start is not None and now < self.start:
            return False
        return not (self.end is not None and now >= self.end)

    @property
    def exhausted(self) -> bool:
        """True once a counted rule has fired its last time."""
        return self.remaining is not None and self.remaining <= 0


class FaultPlan:
    """The ordered rules of one mock provider.

    Matching is synchronous and cheap (a scan of the rule list), so it can run on every request
    without holding up the event loop.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._rules: list[FaultRule] = []

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The rules in matching order, exhausted ones included."""
        return tuple(self._rules)

    def add(
        self,
        route: RouteSelector,
        fault: Fault,
        *,
        times: int | None = None,
        start: float | None = None,
        end: float | None = None,
        probability: float = 1.0,
    ) -> FaultRule:
        """Append a rule; see ``MockProvider.add_fault``."""
        if route not in _SELECTORS:
            raise ValueError(f"route must be one of {', '.join(_SELECTORS)}; got {route!r}")
        if not isinstance(fault, Fault):
            raise TypeError("fault must be a Fault (use Fault.status(...) and friends)")
        if times is not None:
            _check_count("times", times)
        probability = float(probability)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability!r}")
        for name, value in (("start", start), ("end", end)):
            if value is not None and math.isnan(value):
                raise ValueError(f"{name} must be a number")
        if start is not None and end is not None and end < start:
            raise ValueError("end must not be before start")
        rule = FaultRule(
            route=route,
            fault=fault,
            remaining=times,
            start=start,
            end=end,
            probability=probability,
        )
        self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Drop ``rule``; a rule that is not in the plan is ignored."""
        self._rules = [r for r in self._rules if r is not rule]

    def clear(self, route: RouteSelector | None = None) -> None:
        """Drop every rule, or only the rules added for ``route``."""
        if route is None:
            self._rules.clear()
        else:
            self._rules = [r for r in self._rules if r.route != route]

    def match(self, route: Route, now: float) -> FaultRule | None:
        """The rule that applies to a request on ``route`` at ``now``, consuming one use of it.

        Rules are tried in insertion order. An active rule with ``probability < 1`` rolls the
        plan's seeded RNG; a failed roll moves on to the next rule without consuming anything.
        """
        for rule in self._rules:
            if rule.route != "*" and rule.route != route:
                continue
            if not rule.active(now):
                continue
            # Always-firing rules skip the roll, so adding one never shifts the RNG sequence
            # that later probabilistic rules see.
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            rule.hits += 1
            return rule
        return None
