"""Small pieces of the console: the default connector, the link's message, the filter box."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable, Input

from rakka_trio import open_control_client
from rakka_trio._credentials import Secret

from ._link import Connector
from ._model import Input as ModelInput
from ._view import Cell

__all__ = ["DEFAULT_CLIENT_NAME", "FilterInput", "LinkEvent", "cells_text", "default_connector"]

DEFAULT_CLIENT_NAME = "tui"
"""The ``client`` name sent in the hello (the audit trail shows ``tui@address:port``)."""


def cells_text(cells: Sequence[Cell]) -> Text:
    """Cells as one Text."""
    # Text objects, never strings: Textual would parse a string as markup, and server text
    # like "[bold]" must be shown as typed.
    return Text.assemble(*((cell.text, cell.style) for cell in cells))


def default_connector(
    url: str,
    token: Secret | None,
    *,
    client_name: str = DEFAULT_CLIENT_NAME,
    ssl_context: ssl.SSLContext | None = None,
    scope: str | None = None,
) -> Connector:
    """A connector that opens a real control-plane connection to ``url`` (``scope="fleet"``:
    every node of the server's fleet)."""
    return functools.partial(
        open_control_client,
        url,
        token=token,
        client_name=client_name,
        ssl_context=ssl_context,
        scope=scope,
    )


class LinkEvent(Message):
    """Something from the Trio side: a server frame, a connection change or a command answer."""

    def __init__(self, event: ModelInput) -> None:
        super().__init__()
        self.event = event


class FilterInput(Input):
    """The ``/`` filter box: Escape clears and hides it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    def action_clear(self) -> None:
        """Clear the filter and give the table the focus back."""
        self.value = ""
        self.app.query_one("#endpoints", DataTable).focus()
        self.display = False
