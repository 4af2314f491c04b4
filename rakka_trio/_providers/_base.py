"""The shape every provider stream adapter shares, and helpers for reading provider JSON."""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from typing import Any

from .._chunks import StreamChunk, Usage
from .._errors import ContentFiltered, ProviderError, StreamError, StreamTruncated
from .._sse import SSEEvent
from ._classify import COMMON_ERRORS, ErrorClassifier

__all__ = ["StreamAdapter", "as_int", "as_map", "as_str", "loads", "opt_int"]


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping (providers omit and null fields)."""
    # ``json.loads`` makes plain dicts: an exact type test is a fraction of an ABC check.
    if type(value) is dict or isinstance(value, Mapping):
        return value
    return {}


def as_str(value: Any) -> str:
    """``value`` if it is a string, else ``""``."""
    return value if isinstance(value, str) else ""


def as_int(value: Any) -> int:
    """``value`` if it is a (non-bool) integer, else 0: token counts may be missing or null."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0


def opt_int(value: Any) -> int | None:
    """``value`` if it is a (non-bool) integer, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


_raw_decode = json.JSONDecoder().raw_decode


def loads(data: str) -> Any:
    """``json.loads(data)``, faster for the compact JSON providers stream.

    ``json.loads`` scans for whitespace around the value with a regex on each call, a good
    part of its cost on small payloads; a value that fills ``data`` exactly needs neither
    scan. Anything else (surrounding whitespace, malformed data) goes to ``json.loads``, so
    the result and the errors are the same.
    """
    try:
        value, end = _raw_decode(data)
        if end == len(data):
            return value
    except ValueError:
        pass
    return json.loads(data)


class StreamAdapter(abc.ABC):
    """Turns one provider's server-sent events into :class:`StreamChunk` objects.

    Pure and I/O-free: call :meth:`feed` with each event in order, then :meth:`finish` once at
    the end of the byte stream. Errors the provider reports in the stream are raised from
    :meth:`feed` as typed :class:`~rakka_trio.ProviderError` subclasses; :meth:`finish` raises
    :class:`~rakka_trio.StreamTruncated` if the provider's end marker never came, and
    :class:`~rakka_trio.ContentFiltered` if the provider stopped the output for policy reasons
    (it is raised there, after the usage that follows it was delivered). Every error carries
    the adapter's ``provider`` and ``endpoint``; in-stream error objects are classified by
    ``errors`` (default: the shared vocabulary).

    After the end marker the adapter exposes the response's ``usage`` (latest totals),
    ``finish_reason`` (normalised), ``response_id`` and ``model``.
    """

    default_provider = "unknown"

    def __init__(
        self,
        *,
        provider: str | None = None,
        endpoint: str | None = None,
        errors: ErrorClassifier | None = None,
    ) -> None:
        self.provider = provider or self.default_provider
        self.endpoint = endpoint
        self.errors = errors if errors is not None else COMMON_ERRORS
        self.done = False
        """Whether the provider's terminal marker was seen."""
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.raw_finish_reason: str | None = None
        self.response_id: str | None = None
        self.model: str | None = None
        self._filtered: ContentFiltered | None = None

    @abc.abstractmethod
    def feed(self, event: SSEEvent) -> list[StreamChunk]:
        """Interpret one event; return the chunks it carries (often none)."""

    def finish(self) -> list[StreamChunk]:
        """The byte stream ended: check that the response really did."""
        if self._filtered is not None:
            raise self._filtered
        if not self.done:
            raise self._truncated()
        return []

    # --- helpers for subclasses ----------------------------------------------------------------

    def _truncated(self, what: str = "its end marker") -> StreamTruncated:
        return StreamTruncated(
            f"stream ended before {what}", provider=self.provider, endpoint=self.endpoint
        )

    def _json(self, event: SSEEvent) -> Mapping[str, Any]:
        """The event's data as a JSON object; malformed data is a :class:`StreamError`."""
        try:
            value = loads(event.data)
        except ValueError as exc:
            raise StreamError(
                f"malformed JSON in {event.event!r} event: {exc}",
                provider=self.provider,
                endpoint=self.endpoint,
                code="malformed_event",
            ) from None
        if type(value) is not dict and not isinstance(value, Mapping):
            raise StreamError(
                f"expected a JSON object in {event.event!r} event, got {type(value).__name__}",
                provider=self.provider,
                endpoint=self.endpoint,
                code="malformed_event",
            )
        return value

    def _error(self, payload: Mapping[str, Any]) -> ProviderError:
        return self.errors.stream_error(payload, provider=self.provider, endpoint=self.endpoint)

    def _filter(self, reason: str, message: str) -> None:
        """Record a policy stop; :meth:`finish` raises it once the stream is over."""
        if self._filtered is None:
            self._filtered = ContentFiltered(
                message, reason=reason, code=reason, provider=self.provider, endpoint=self.endpoint
            )
