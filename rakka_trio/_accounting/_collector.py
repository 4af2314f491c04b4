"""A ``prometheus_client`` collector over a supervisor, for apps that already run a registry.

``prometheus_client`` is optional: it is imported when a collector is built. The collector
renders :func:`prometheus_text` at each scrape and hands the parsed families to the registry,
so the metric names, labels and help texts are exactly those of the text exposition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._extras import require
from ._prometheus import prometheus_text

if TYPE_CHECKING:
    from ._prometheus import _HasStatistics

__all__ = ["PrometheusCollector"]


class PrometheusCollector:
    """Expose a supervisor's metrics through a ``prometheus_client`` registry.

    ``PrometheusCollector(sup).register()`` adds it to the default registry (or pass
    ``registry=``); ``unregister()`` removes it, e.g. when the supervisor closes.
    """

    def __init__(self, source: _HasStatistics) -> None:
        require("prometheus_client", "metrics", "the prometheus_client collector")
        self._source = source
        self._registry: Any = None

    def collect(self) -> Iterator[Any]:
        """Yield the current metric families (called by the registry at each scrape)."""
        from prometheus_client.parser import text_string_to_metric_families

        yield from text_string_to_metric_families(prometheus_text(self._source))

    def describe(self) -> list[Any]:
        """Nothing up front: the endpoints (and so the samples) change at run time."""
        return []

    def register(self, registry: Any = None) -> PrometheusCollector:
        """Register with ``registry`` (default: ``prometheus_client.REGISTRY``); returns self."""
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        registry.register(self)
        self._registry = registry
        return self

    def unregister(self) -> None:
        """Remove this collector from the registry it was registered with (if any)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None
