"""Configuration: frozen keyword-only attrs classes, validated on construction.

``_classes`` defines them and :func:`load_config`; ``_convert`` is the private cattrs
converter that loads dicts and TOML and reports every bad field path at once.
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

__all__ = [
    "BreakerConfig",
    "BudgetConfig",
    "CapacityPolicy",
    "DeploymentConfig",
    "EndpointConfig",
    "EngineConfig",
    "ModelPrice",
    "Provider",
    "RateLimits",
    "RetryPolicy",
    "SupervisorConfig",
    "Timeouts",
    "load_config",
]
