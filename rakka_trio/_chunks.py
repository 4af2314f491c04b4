"""What a streamed completion yields: provider-neutral deltas, finish reason and usage.

Every provider adapter (OpenAI chat and Responses, Anthropic, Gemini) turns its own event shapes
into these types, so code consuming a stream does not care where it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._sse import SSEEvent

__all__ = ["Citation", "StreamChunk", "ToolCallDelta", "Usage"]


def _sum_in_out(usage: Any) -> int:
    return int(usage.input_tokens) + int(usage.output_tokens)


@attrs.frozen
class Usage:
    """Token usage of one response, normalised across providers.

    ``input_tokens`` counts every prompt token, including those read from or written to a
    prompt cache (Anthropic reports those separately; they are added back here, so the number
    means the same for every provider). ``cached_tokens`` is the part of the input served from
    the cache, ``cache_creation_tokens`` the part written to it (Anthropic).
    ``output_tokens`` counts every generated token, including reasoning/thinking tokens;
    ``reasoning_tokens`` is that part. ``total_tokens`` is the provider's total when it gives
    one, else input + output.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = attrs.field(default=attrs.Factory(_sum_in_out, takes_self=True))
    cache_creation_tokens: int = attrs.field(default=0, kw_only=True)


@attrs.frozen
class ToolCallDelta:
    """A piece of a tool (function) call the model is making.

    ``index`` identifies the call within the response (0 for the first call, 1 for the second
    ...), the same across all its deltas. ``id`` and ``name`` arrive once, normally on the
    first delta; ``arguments_delta`` is the next fragment of the JSON arguments, to be
    concatenated in order. ``signature`` is the opaque signature the provider attached to the
    call (Gemini's ``thoughtSignature`` on a ``functionCall`` part), which must be sent back
    with the call on the next turn.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""
    signature: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(kw_only=True)
class Citation:
    """A source the model cited for the text around it.

    ``kind`` is the provider's citation type (``char_location``, ``page_location``,
    ``web_search_result_location``, ``url_citation``, ``file_citation``, ``citation_source``
    ...). The other fields are filled when the provider gives them; ``raw`` is the provider's
    object as received (not part of equality).
    """

    kind: str
    cited_text: str | None = None
    title: str | None = None
    url: str | None = None
    start_index: int | None = None
    end_index: int | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class StreamChunk:
    """One increment of a streamed completion.

    Text-like fields are deltas, to be concatenated in order:

    * ``text`` — visible output text;
    * ``thinking`` — reasoning/thinking text (Anthropic thinking, OpenAI reasoning summaries,
      ``reasoning_content`` of OpenAI-compatible servers, Gemini thought parts);
    * ``thinking_signature`` — the opaque signature of a thinking block (Anthropic
      ``signature_delta``, Gemini ``thoughtSignature`` on a text or thought part), needed to
      send the block back;
    * ``refusal`` — the model's refusal message (OpenAI).

    ``redacted_thinking`` is not a delta: each non-empty value is one whole block of encrypted
    reasoning the caller cannot read but must send back on the next turn (Anthropic
    ``redacted_thinking`` ``data``, OpenAI Responses reasoning ``encrypted_content``).

    ``tool_calls`` carries tool-call fragments and ``citations`` sources cited by the text.

    ``finish_reason`` is set once per choice, on the chunk that ends it, normalised to
    ``"stop"``, ``"length"``, ``"tool_calls"`` or ``"content_filter"`` (anything else is the
    provider's reason in lower case); ``raw_finish_reason`` is the provider's own value.
    ``usage`` is set on the chunk(s) carrying token usage, with the totals reported so far;
    the last one seen is final. ``index`` is the choice (candidate) the chunk belongs to, 0
    unless several were requested. ``raw_event`` is the server-sent event the chunk came from
    (for logging and debugging; not part of equality).
    """

    text: str = ""
    thinking: str = ""
    thinking_signature: str = ""
    redacted_thinking: str = ""
    refusal: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    citations: tuple[Citation, ...] = ()
    finish_reason: str | None = None
    raw_finish_reason: str | None = None
    usage: Usage | None = None
    index: int = 0
    raw_event: SSEEvent | None = attrs.field(default=None, eq=False, repr=False)
