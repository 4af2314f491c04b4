"""rakka-trio's terminal console (``rakka-trio tui URL``), built on Textual.

The sources live in the repository's ``tui/`` folder and install as ``rakka_trio_tui`` (never
a bare ``tui`` module). Importing this package is cheap: Textual is only imported when
:class:`RakkaTui` (or another name that needs it) is first used, so ``rakka-trio demo`` and the
other commands never pay for it.

Pieces: :mod:`._model` is the pure reducer (frames → model and log lines), :mod:`._view`
turns the model into rows, header and the columns that fit the terminal, :mod:`._text` holds
the text helpers, :mod:`._link` the Trio connection with reconnect, :mod:`._guest` runs Trio
in guest mode on Textual's asyncio loop, :mod:`._app` and :mod:`._screens` are the Textual
side, :mod:`._command` the CLI glue.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._app import RakkaTui, default_connector
    from ._command import run_tui
    from ._link import Backoff, ClientLike, Connector, ControlLink

__all__ = [
    "Backoff",
    "ClientLike",
    "Connector",
    "ControlLink",
    "RakkaTui",
    "default_connector",
    "run_tui",
]

_LAZY = {
    "Backoff": "._link",
    "ClientLike": "._link",
    "Connector": "._link",
    "ControlLink": "._link",
    "RakkaTui": "._app",
    "default_connector": "._app",
    "run_tui": "._command",
}


def __getattr__(name: str) -> object:
    """Import the module defining ``name`` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
