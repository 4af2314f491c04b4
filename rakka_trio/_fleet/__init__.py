"""The fleet: many processes, one view and one force-open, through Redis.

Layout: ``_records`` (Redis names and the JSON records, parsed as untrusted input), ``_types``
(the frozen snapshots and results), ``_view`` (aggregation, no I/O), ``_host`` (what a node
exposes to its link; the supervisor's side), ``_link`` (the Redis session: registration,
publishing, commands and acks; the only module that imports ``coredis``) and ``_api`` (the
public :class:`Fleet` and :func:`open_fleet`).
"""

from ._api import Fleet, fleet_for_supervisor, no_fleet_error, open_fleet
from ._errors import FleetError, FleetUnavailable, InvalidFleetCommand
from ._records import FleetOverride
from ._types import (
    FleetCommandResult,
    FleetEndpoint,
    FleetEvent,
    FleetLinkChanged,
    FleetLinkStatistics,
    FleetNode,
    FleetNodeEndpoint,
    FleetView,
)

__all__ = [
    "Fleet",
    "FleetCommandResult",
    "FleetEndpoint",
    "FleetError",
    "FleetEvent",
    "FleetLinkChanged",
    "FleetLinkStatistics",
    "FleetNode",
    "FleetNodeEndpoint",
    "FleetOverride",
    "FleetUnavailable",
    "FleetView",
    "InvalidFleetCommand",
    "fleet_for_supervisor",
    "no_fleet_error",
    "open_fleet",
]
