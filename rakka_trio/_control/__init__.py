"""The control plane: a websocket feed of breaker events and operator commands.

``_schema``/``_codec``/``_frames`` (re-exported together as ``_protocol``) define protocol v1.
``_server`` serves it: ``_transport`` accepts connections, ``_admission`` and ``_guards`` decide
who gets in (hello, tokens, origin, throttling, the waiting room), ``_feed`` reads commands and
writes events and stats, ``_connection`` holds per-connection state. ``_client`` speaks it;
``_cli`` is the ``state``, ``events``, ``force-open``, ``reset`` and ``disable`` commands.
"""

from ._client import (
    ControlAuthError,
    ControlClient,
    ControlCommandError,
    ControlConnectionError,
    ControlError,
    ControlUnknownEndpoint,
    open_control_client,
)
from ._connection import ControlServerStatistics
from ._server import ControlServer, serve_control

__all__ = [
    "ControlAuthError",
    "ControlClient",
    "ControlCommandError",
    "ControlConnectionError",
    "ControlError",
    "ControlServer",
    "ControlServerStatistics",
    "ControlUnknownEndpoint",
    "open_control_client",
    "serve_control",
]
