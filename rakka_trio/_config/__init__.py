"""Configuration: frozen keyword-only attrs classes, validated on construction.

``_classes`` defines them and :func:`load_config` (``_fleet`` the fleet's); ``_convert`` is
the private cattrs converter that loads dicts and TOML and reports every bad field path at once.
"""

from ._classes import (
    BreakerConfig,
    BudgetConfig,
    CapacityPolicy,
    DeploymentConfig,
    EndpointConfig,
    EngineConfig,
    ModelPrice,
    Provider,
    RateLimits,
    RetryPolicy,
    SupervisorConfig,
    Timeouts,
    load_config,
)
from ._fleet import FleetConfig

__all__ = [
    "BreakerConfig",
    "BudgetConfig",
    "CapacityPolicy",
    "DeploymentConfig",
    "EndpointConfig",
    "EngineConfig",
    "FleetConfig",
    "ModelPrice",
    "Provider",
    "RateLimits",
    "RetryPolicy",
    "SupervisorConfig",
    "Timeouts",
    "load_config",
]
