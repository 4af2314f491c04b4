"""Scrubbing of credentials from any text that may reach a log, error, event or the control feed.

Two layers: every :class:`~rakka_trio.Secret` registers its value here (the process holds the
value anyway; this set is never exposed), and well-known key shapes are masked even when they were
never registered (a provider echoing a key back in an error body, for example).
"""

from __future__ import annotations

import re
import threading

__all__ = ["redact", "register_secret_value"]

# Shapes of provider credentials: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...),
# Google API keys (AIza...), bearer tokens in echoed headers, and generic key=value pairs.
_KEY_PATTERNS = re.compile(
    r"(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,})"
    r"|(?:AIza[0-9A-Za-z_\-]{20,})"
    r"|(?:(?<=[Bb]earer )[A-Za-z0-9._~+/\-]{8,}=*)"
    r"|(?:(?<=api[_-]key=)[^&\s\"']{4,})"
    r"|(?:(?<=key=)[^&\s\"']{8,})"
)
_MASK = "***"

_lock = threading.Lock()
_registered: set[str] = set()


def register_secret_value(value: str) -> None:
    """Remember a secret value so :func:`redact` masks it wherever it appears.

    Very short values are not registered: masking every occurrence of, say, ``"ab"`` would
    mangle unrelated text while protecting nothing real.
    """
    if len(value) >= 6:
        with _lock:
            _registered.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every known key shape masked."""
    if _registered:
        with _lock:
            values = sorted(_registered, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, _MASK)
    return _KEY_PATTERNS.sub(_MASK, text)
