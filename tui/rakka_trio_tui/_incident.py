"""The incident panel under the endpoint table: the selected endpoint's breakdown by cause
and one line per deployment (Textual side; the content comes from :mod:`._incident_view`)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from rakka_trio._redact import redact

from ._incident_view import Piece, breakdown_lines, deployment_lines
from ._model import Model

__all__ = ["IncidentPanel"]


class IncidentPanel(Static):
    """Shows the selected endpoint's figures and the deployments; hidden when the server
    reports neither (an older server)."""

    DEFAULT_CSS = """
    IncidentPanel {
        height: auto;
        padding: 0 1;
        border-top: solid $panel;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def show(self, model: Model, selected: str | None) -> None:
        """Redraw for ``model`` with ``selected`` the endpoint under the table's cursor."""
        lines = breakdown_lines(model, selected)
        deployments = deployment_lines(model)
        if deployments:
            lines = [*lines, *deployments]
        self.display = bool(lines)
        # Text objects, never markup: server text such as "[bold]" is shown as typed.
        self.update(Text("\n").join(_line(pieces) for pieces in lines))


def _line(pieces: list[Piece]) -> Text:
    return Text.assemble(*((redact(text), style) for text, style in pieces), no_wrap=True)
