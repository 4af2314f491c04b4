"""The control plane: a websocket feed of breaker events and operator commands.

``_schema``/``_codec``/``_frames`` (re-exported together as ``_protocol``) define protocol v1.
``_server`` serves it: ``_transport`` accepts connections, ``_admission`` and ``_guards`` decide
who gets in (hello, tokens, origin, throttling, the waiting room), ``_feed`` reads commands and
writes events and stats, ``_connection`` holds per-connection state. ``_client`` speaks it;
``_cli`` is the ``state``, ``events``, ``force-open``, ``reset`` and ``disable`` commands.
The fleet scope: ``_fleet_schema`` (its wire additions), ``_fleet_scope`` (the fleet feed and
fleet-wide commands), ``_fleet_server`` (a server with no endpoints, for ``fleet-serve``) and
``_fleet_cli`` (``fleet-serve`` and the ``--fleet`` output).
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
from ._fleet_server import serve_fleet_control
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
    "serve_fleet_control",
]
