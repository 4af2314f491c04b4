"""The fleet's errors (part of the one hierarchy under :class:`~rakka_trio.RakkaError`)."""

from __future__ import annotations

from .._errors import RakkaError

__all__ = ["FleetError", "FleetUnavailable", "InvalidFleetCommand"]


class FleetError(RakkaError):
    """Something about the fleet went wrong (or no fleet is configured)."""

    retryable = False
    counts_as_circuit_failure = False


class FleetUnavailable(FleetError):
    """The fleet link is down (Redis unreachable): a fleet command could not be stored or a
    fleet view could not be read. Node-scope commands (``sup.force_open``) still work."""

    retryable = True


class InvalidFleetCommand(FleetError, ValueError):
    """A fleet command's arguments are invalid (endpoint name, duration, reason, actor)."""
