"""Optional OpenTelemetry: a span per call and metrics, through ``opentelemetry-api``.

Like any library instrumented natively, rakka-trio only uses the API: when
``opentelemetry-api`` is installed (``pip install 'rakka-trio[otel]'``) every supervisor sends
its spans and metrics to the global tracer and meter providers, which do nothing until the
application configures the SDK. Without the package nothing is imported and nothing is done.
:func:`instrument_opentelemetry` points one supervisor at providers of your choice.

A call's span starts when the call is admitted by the endpoint and ends with its outcome:
``chat {model}`` (kind CLIENT) with the GenAI attributes (operation, provider, model, token
usage) and ``rakka.endpoint``, ``rakka.outcome``, ``rakka.attempts``; each failed try adds a
``rakka.attempt_failed`` event. Only error class names and outcome labels are recorded, never
a message (which could quote a provider's answer) and never a credential.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from .._extras import require
from .._version import __version__

if TYPE_CHECKING:
    from .._chunks import Usage

__all__ = ["Telemetry", "TelemetrySwitch", "instrument_opentelemetry"]

_SCOPE = "rakka_trio"
_MAX_LABEL_SETS = 4096


class Telemetry:
    """The tracer and instruments of one set of providers (internal)."""

    __slots__ = (
        "_labels",
        "_status",
        "_tracer",
        "attempts",
        "duration",
        "fallbacks",
        "requests",
        "retries",
        "tokens",
    )

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from opentelemetry import metrics, trace

        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        self._status = trace.Status, trace.StatusCode
        # Attribute sets reused for every call (they depend on a few labels only; keys of
        # different lengths never collide). Cleared if request models make it grow too much.
        self._labels: dict[tuple[str, ...], dict[str, str]] = {}
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self.requests = meter.create_counter(
            "rakka.requests", unit="{request}", description="Requests by final outcome."
        )
        self.attempts = meter.create_counter(
            "rakka.attempts", unit="{attempt}", description="Tries by their own outcome."
        )
        self.retries = meter.create_counter(
            "rakka.retries", unit="{retry}", description="Tries repeated on the same endpoint."
        )
        self.fallbacks = meter.create_counter(
            "rakka.fallbacks",
            unit="{fallback}",
            description="Requests a deployment moved to another endpoint.",
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of calls."
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call."
        )

    def start(self, endpoint: str, provider: str, model: str | None) -> Any:
        """Start the span of one call."""
        from opentelemetry.trace import SpanKind

        attributes: dict[str, str] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": provider,
            "gen_ai.provider.name": provider,
            "rakka.endpoint": endpoint,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        name = f"chat {model}" if model else "chat"
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def _outcome_labels(self, endpoint: str, outcome: str) -> dict[str, str]:
        key = ("outcome", endpoint, outcome)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = {"rakka.endpoint": endpoint, "rakka.outcome": outcome}
        return labels

    def attempt_failed(self, span: Any, endpoint: str, outcome: str, exc: BaseException) -> None:
        """A try of the call failed (the call may try again or move on)."""
        self.attempts.add(1, self._outcome_labels(endpoint, outcome))
        if span.is_recording():
            span.add_event(
                "rakka.attempt_failed",
                {"rakka.outcome": outcome, "error.type": type(exc).__name__},
            )

    def end(
        self,
        span: Any,
        *,
        endpoint: str,
        provider: str,
        model: str | None,
        outcome: str,
        exc: BaseException | None,
        attempts: int,
        seconds: float,
        usage: Usage | None,
        served: bool,
    ) -> None:
        """The call ended with ``outcome``; ``served`` when its try counted as an attempt."""
        labels = self._outcome_labels(endpoint, outcome)
        self.requests.add(1, labels)
        if served:
            self.attempts.add(1, labels)
        failed = outcome not in ("ok", "filtered", "cancelled")
        error_type = type(exc).__name__ if failed and exc is not None else None
        key = ("call", provider, model or "", error_type or "")
        measured = self._labels.get(key)
        if measured is None:
            if len(self._labels) > _MAX_LABEL_SETS:
                self._labels.clear()
            measured = {"gen_ai.operation.name": "chat", "gen_ai.system": provider}
            if model:
                measured["gen_ai.request.model"] = model
            if error_type:
                measured["error.type"] = error_type
            self._labels[key] = measured
        self.duration.record(seconds, measured)
        common = {k: v for k, v in measured.items() if k != "error.type"} if usage else {}
        if usage is not None:
            self.tokens.record(usage.input_tokens, dict(common, **{"gen_ai.token.type": "input"}))
            self.tokens.record(usage.output_tokens, dict(common, **{"gen_ai.token.type": "output"}))
        if span.is_recording():
            span.set_attribute("rakka.outcome", outcome)
            span.set_attribute("rakka.attempts", attempts)
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            if error_type is not None:
                status, code = self._status
                span.set_attribute("error.type", error_type)
                span.set_status(status(code.ERROR, error_type))
        span.end()

    def retried(self, endpoint: str) -> None:
        """A call tries again on the same endpoint."""
        key = ("retry", endpoint)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = {"rakka.endpoint": endpoint}
        self.retries.add(1, labels)

    def fallback(self, deployment: str, left: str, to: str, cause: str) -> None:
        """A deployment request moved from ``left`` to ``to`` because of ``cause``."""
        self.fallbacks.add(
            1,
            {
                "rakka.deployment": deployment,
                "rakka.endpoint": left,
                "rakka.to": to,
                "rakka.cause": cause,
            },
        )


def _api_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


class TelemetrySwitch:
    """Where a supervisor's meters send telemetry: ``current`` is ``None`` (nothing) or a
    :class:`Telemetry`. Shared by every meter of one supervisor, so switching it reaches
    the endpoints added later too (internal)."""

    __slots__ = ("current",)

    def __init__(self, current: Telemetry | None = None) -> None:
        self.current = current

    @classmethod
    def from_environment(cls) -> TelemetrySwitch:
        """The global providers when ``opentelemetry-api`` is installed, else nothing."""
        return cls(Telemetry() if _api_installed() else None)


def instrument_opentelemetry(
    supervisor: Any, *, tracer_provider: Any = None, meter_provider: Any = None
) -> None:
    """Send ``supervisor``'s spans and metrics to these OpenTelemetry providers (default:
    the global ones, which every supervisor uses anyway when ``opentelemetry-api`` is
    installed). Applies to calls that start afterwards, on every endpoint and deployment.

    Raises :class:`~rakka_trio.MissingExtra` when ``opentelemetry-api`` is not installed.
    """
    require("opentelemetry", "otel", "OpenTelemetry instrumentation")
    switch: TelemetrySwitch = supervisor.telemetry
    switch.current = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
