"""Optional dependencies: the console (``rakka-trio[tui]``) and Redis (``rakka-trio[redis]``).

An application that embeds the library needs neither, so they are extras; whatever needs one
calls :func:`require` first and gets a one-line :class:`MissingExtra` naming the extra to
install instead of a bare ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib.util

from ._errors import RakkaError

__all__ = ["MissingExtra", "require"]


class MissingExtra(RakkaError, ImportError):
    """A feature needs an optional dependency that is not installed."""

    retryable = False
    counts_as_circuit_failure = False


def require(module: str, extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported.

    ``feature`` says what needs it, e.g. ``"the shared limiter modes"``.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a None in sys.modules
        found = False
    if not found:
        raise MissingExtra(
            f"{feature} needs {module}, which is not installed: pip install 'rakka-trio[{extra}]'"
        )
