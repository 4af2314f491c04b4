"""Incremental, I/O-free decoder for server-sent events.

It implements the WHATWG HTML "event stream interpretation" rules exactly
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* the stream is UTF-8 with replacement of invalid sequences; one leading BOM is dropped;
* lines end in CR, LF or CRLF, including a CR at the end of one read and its LF at the start
  of the next (one line end, not two);
* ``:`` starts a comment; a line without a colon is a field name with an empty value; one
  space after the colon is removed; ``data`` lines are joined with LF; ``event`` defaults to
  ``message`` and resets after each dispatch; ``id`` is ignored when it contains NUL and
  otherwise persists; ``retry`` is used only when it is all ASCII digits; unknown fields are
  ignored;
* a blank line dispatches the event, unless no ``data`` field was seen (the last event ID is
  still updated); an event not closed by a blank line before the end of the stream is
  discarded (``lenient_eof=True`` flushes it instead).

How it stays fast and linear
----------------------------
The decoder works on bytes and decodes to text per field value. That gives the same result as
decoding the whole stream first: CR, LF and ``:`` are ASCII, and in UTF-8 an ASCII byte never
occurs inside a multi-byte sequence and always ends an invalid one, so no character (valid or
replaced) straddles a line end or a colon. A character split across two reads sits in the
unterminated line that is carried over, so it is decoded whole once its line is complete.

CR is rare on the wire, so a read containing CR is normalised to LF once (a trailing CR is
remembered so the next read's leading LF is dropped); everything after that sees LF only.

The common shape of LLM streams, ``data: {json}\\n\\n`` repeated, is split in C with
``bytes.split(b"\\n\\ndata: ")``: every piece without an LF is exactly one event's data. Any
other piece goes through the general line-by-line interpreter, so the fast path is an
optimisation, never a different grammar.

The unterminated tail of a read is carried to the next one. It is glued in front of the next
read only while it is at most four times as long as that read, so a byte is re-copied at most
a few times; a longer tail (a huge event arriving in small reads) moves into a ``bytearray``
that grows in place, only the new read is searched for the line end, and a huge ``data`` value
is decoded straight out of that buffer. Total work is therefore linear in the input however
it is chunked, and ``max_event_size`` bounds what one event may buffer.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ._errors import EventTooLarge

__all__ = ["SSEDecoder", "SSEEvent"]

_BOM: Final = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched server-sent event.

    ``event`` is the event type (``"message"`` unless the stream set one), ``data`` the joined
    ``data`` lines, ``id`` the last event ID in effect when the event was dispatched (it persists
    across events until the stream changes it), and ``retry`` the reconnection time in
    milliseconds in effect at dispatch (``None`` until the stream sent a valid ``retry`` field).
    Events are immutable values: they compare equal by value, hash, pickle, and
    ``event._replace(data=...)`` makes a changed copy.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


# A named tuple is built by one C call from a plain tuple, which the decoder does directly (the
# generated ``__new__`` adds a Python-level call per event, the bulk of the per-event cost).
_new_tuple = tuple.__new__


def _make_event(event: str, data: str, ident: str, retry: int | None) -> SSEEvent:
    return _new_tuple(SSEEvent, (event, data, ident, retry))


# CPython refuses to parse integers longer than this many digits (a guard against quadratic
# conversion); a reconnection time that long is meaningless anyway, so such a field is ignored.
_MAX_RETRY_DIGITS: Final = 4300


def _parse_retry(value: bytes) -> int | None:
    """The ``retry`` field's integer, or ``None`` when the field must be ignored."""
    if not value.isdigit():  # bytes.isdigit is ASCII-only, and False for b""
        return None
    significant = value.lstrip(b"0") or b"0"
    if len(significant) > _MAX_RETRY_DIGITS:
        return None
    return int(significant)


class SSEDecoder:
    """Incremental server-sent-events decoder: bytes in, :class:`SSEEvent` objects out.

    Feed it the response body in whatever pieces the network delivers with :meth:`feed`, then
    call :meth:`close` at the end of the stream. It does no I/O and keeps no reference to the
    caller's buffers beyond one unterminated line.

    ``max_event_size`` bounds, in bytes, both one event's data and any single line (field name
    and value); going past it raises :class:`~rakka_trio.EventTooLarge` instead of buffering
    without limit. After that error the decoder must not be used again.

    With ``lenient_eof=True``, :meth:`close` interprets an unterminated last line and dispatches
    the pending event as if the stream had ended with a blank line; by default an event not
    closed by a blank line is discarded, as the specification requires.
    """

    __slots__ = (
        "_closed",
        "_cr",
        "_data",
        "_data_size",
        "_head",
        "_id",
        "_last_id",
        "_lenient",
        "_long",
        "_max",
        "_recopied",
        "_retry",
        "_started",
        "_steady",
        "_tail",
        "_type",
    )

    def __init__(self, max_event_size: int = 64 * 2**20, *, lenient_eof: bool = False) -> None:
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be positive, got {max_event_size}")
        self._max = max_event_size
        self._lenient = lenient_eof
        self._started = False  # whether the leading-BOM question is settled
        self._head = b""  # the first bytes, held back while they could still be a BOM
        self._cr = False  # the last byte fed was CR: a leading LF in the next read belongs to it
        self._steady = False  # started, no CR pending, not closed: feed() may skip _settle()
        # The unterminated last line (LF-normalised, no terminator) is in exactly one of:
        self._tail = b""  # a short one, glued to the front of the next read
        self._long = bytearray()  # a long one, grown in place until its line end arrives
        self._data: list[str] = []  # data buffer, one entry per data line
        self._data_size = 0  # bytes in the data buffer, counting one LF per line
        self._type = ""  # event type buffer
        self._id = ""  # last event ID buffer
        self._last_id = ""  # the event source's last event ID string (set at dispatch)
        self._retry: int | None = None  # reconnection time (ms)
        self._closed = False
        # Bytes of earlier reads copied again while joining them to later ones. It stays within
        # a small multiple of the input size whatever the chunking; tests assert that.
        self._recopied = 0

    @property
    def last_event_id(self) -> str:
        """The last event ID as of the most recent dispatch (what ``Last-Event-ID`` should send).

        Like the specification's "last event ID string", it changes when a blank line is
        processed, even if no event is dispatched because the data buffer was empty.
        """
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The current reconnection time in milliseconds, or ``None`` if the stream set none."""
        return self._retry

    @property
    def max_event_size(self) -> int:
        """The largest event data (and line) in bytes this decoder accepts."""
        return self._max

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[SSEEvent]:
        """Decode the next piece of the stream; return the events it completed, in order."""
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if not self._steady:  # closed, start of stream, or a CR ended the previous read
            chunk = self._settle(chunk)
        if not chunk:
            return []
        if 13 in chunk:  # CR: normalise CRLF and lone CR to LF once, here
            if chunk[-1] == 13:  # its LF, if any, comes with the next read
                self._cr = True
                self._steady = False
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        events: list[SSEEvent] = []
        tail = self._tail
        if tail:
            self._tail = b""
            self._recopied += len(tail)
            if len(tail) <= 4 * len(chunk):
                # Short carried-over line: copying it with the read costs O(read).
                chunk = tail + chunk
            else:
                # Long line: collect it in a growable buffer from now on.
                self._long += tail
        long = self._long
        if long:
            # Only the new bytes are searched for the end of the line.
            nl = chunk.find(b"\n")
            if nl < 0:
                long += chunk
                if len(long) > self._max:
                    raise self._too_large(len(long))
                return events
            long += memoryview(chunk)[:nl]
            self._long_line(events)
            chunk = chunk[nl + 1 :]
            if not chunk:
                return events
        # From here ``chunk`` is LF-only, starts at a line start and nothing is carried over.
        # Each separator below is "<LF ending a line><blank line>data: ", so every piece but the
        # last is a run of complete lines followed by a dispatch, and every piece after the
        # first starts with "data: ".
        parts = chunk.split(b"\n\ndata: ")
        last = parts.pop()
        limit = self._max
        if parts:
            first = parts[0]
            if (
                not self._data
                and not self._type
                and first.startswith(b"data: ")
                and 10 not in first
                and len(first) <= limit
            ):
                # One whole single-line event (typical of small reads).
                events.append(
                    _new_tuple(
                        SSEEvent,
                        ("message", first[6:].decode("utf-8", "replace"), self._id, self._retry),
                    )
                )
            else:
                lines = first.split(b"\n")
                lines.append(b"")
                self._lines(lines, events)
            if len(parts) > 1:
                del parts[0]
                self._fast(parts, len(chunk) <= limit, events)
            # Every piece ended in a dispatch, and the fast path leaves the ID buffer alone.
            self._last_id = self._id
            if 10 not in last:
                tail = b"data: " + last
                if len(tail) > limit:
                    raise self._too_large(len(tail))
                self._tail = tail
                return events
            lines = last.split(b"\n")
            lines[0] = b"data: " + lines[0]
        elif 10 not in last:
            if len(last) > limit:
                raise self._too_large(len(last))
            self._tail = last
            return events
        else:
            lines = last.split(b"\n")
        tail = lines.pop()
        self._lines(lines, events)
        if tail:
            if len(tail) > limit:
                raise self._too_large(len(tail))
            self._tail = tail
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: return what it completes (only with ``lenient_eof``) and stop.

        Per the specification an event not terminated by a blank line is discarded, so by
        default this returns ``[]``. Calling it again returns ``[]``.
        """
        if self._closed:
            return []
        self._closed = True
        self._steady = False
        events: list[SSEEvent] = []
        if self._lenient:
            tail = (bytes(self._long) or self._tail) if self._started else self._head
            self._lines([tail, b""] if tail else [b""], events)
        self._tail = b""
        self._long = bytearray()
        self._data = []
        self._data_size = 0
        self._type = ""
        return events

    # --- internals ---------------------------------------------------------------------------

    def _settle(self, chunk: bytes) -> bytes:
        """The rare states, kept off the per-read path: closed, BOM pending, CR pending."""
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() called after close()")
        if not self._started:
            chunk = self._head + chunk
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._head = chunk  # could still become a BOM: decide on the next read
                return b""
            self._started = True
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == 10:  # the LF of a CRLF split across reads
                chunk = chunk[1:]
        self._steady = self._started and not self._cr
        return chunk

    def _too_large(self, size: int) -> EventTooLarge:
        return EventTooLarge(
            f"server-sent event of at least {size} bytes exceeds max_event_size={self._max}"
        )

    def _long_line(self, events: list[SSEEvent]) -> None:
        """Interpret the long line just completed in ``_long``, then empty it.

        The line may be up to ``max_event_size`` bytes, so a ``data`` value is decoded straight
        out of the buffer instead of being copied to ``bytes`` and sliced first (two copies of
        a possibly huge value saved; memory traffic dominates at this size).
        """
        line = self._long
        if len(line) > self._max:
            raise self._too_large(len(line))
        if not line.startswith(b"data:"):
            self._recopied += len(line)
            whole = bytes(line)
            line.clear()
            self._lines([whole], events)
            return
        start = 6 if line[5:6] == b" " else 5
        size = self._data_size + len(line) - start + 1
        if size - 1 > self._max:
            raise self._too_large(size - 1)
        # The view must be released before the bytearray may shrink again.
        with memoryview(line)[start:] as value:
            self._data.append(str(value, "utf-8", "replace"))
        self._data_size = size
        line.clear()

    def _fast(self, parts: list[bytes], small: bool, events: list[SSEEvent]) -> None:
        """Interpret ``parts``: each is "data: " + piece + blank line (see :meth:`feed`).

        ``small`` says the read was within ``max_event_size``, so no piece can exceed it.
        """
        ident = self._id
        retry = self._retry
        limit = self._max
        append = events.append
        new = _new_tuple
        for p in parts:
            if 10 not in p and (small or len(p) + 6 <= limit):
                # The hot loop: a piece without LF is one event's data (_make_event inlined).
                append(new(SSEEvent, ("message", p.decode("utf-8", "replace"), ident, retry)))
            else:
                lines = p.split(b"\n")
                lines[0] = b"data: " + lines[0]
                lines.append(b"")
                self._lines(lines, events)
                ident = self._id
                retry = self._retry

    def _lines(self, lines: list[bytes], events: list[SSEEvent]) -> None:
        """Interpret complete lines (terminators removed) per the specification."""
        data = self._data
        size = self._data_size
        etype = self._type
        ident = self._id
        last_id = self._last_id
        retry = self._retry
        limit = self._max
        for line in lines:
            if not line:  # blank line: dispatch
                last_id = ident
                if data:
                    events.append(_make_event(etype or "message", "\n".join(data), ident, retry))
                    data = []
                    size = 0
                etype = ""
                continue
            if len(line) > limit:
                raise self._too_large(len(line))
            if line.startswith(b"data:"):  # the common field, without the general split below
                value = line[6:] if line[5:6] == b" " else line[5:]
                size += len(value) + 1
                if size - 1 > limit:
                    raise self._too_large(size - 1)
                data.append(value.decode("utf-8", "replace"))
                continue
            colon = line.find(b":")
            if colon == 0:  # comment
                continue
            if colon < 0:
                name = line
                value = b""
            else:
                name = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"event":
                etype = value.decode("utf-8", "replace")
            elif name == b"id":
                if 0 not in value:
                    ident = value.decode("utf-8", "replace")
            elif name == b"retry":
                parsed = _parse_retry(value)
                if parsed is not None:
                    retry = parsed
            elif name == b"data":  # "data" without a colon: an empty data line
                size += 1
                if size - 1 > limit:
                    raise self._too_large(size - 1)
                data.append("")
            # any other field name is ignored
        self._data = data
        self._data_size = size
        self._type = etype
        self._id = ident
        self._last_id = last_id
        self._retry = retry
