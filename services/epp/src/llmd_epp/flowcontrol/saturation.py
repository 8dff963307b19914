"""`utilization-detector`: is an endpoint, or the whole candidate set, out of capacity?

An endpoint has capacity when its metrics are fresh (younger than
`metricsStalenessThreshold`, default 200ms), its waiting queue is below `queueDepthThreshold`
(default 5) and its KV-cache usage below `kvCacheUtilThreshold` (default 0.8). The pool is
saturated when no candidate has capacity. Pure: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmd_epp.scheduling.framework import Handle, Plugin
from llmd_epp.scheduling.registry import Duration, PluginParams, register
from llmd_epp.scheduling.types import Endpoint

DEFAULT_QUEUE_DEPTH_THRESHOLD = 5
DEFAULT_KV_CACHE_UTIL_THRESHOLD = 0.8
DEFAULT_METRICS_STALENESS_THRESHOLD = 0.2


@register()
class UtilizationDetector(Plugin):
    TYPE = "utilization-detector"

    class Params(PluginParams):
        queueDepthThreshold: int = Field(default=DEFAULT_QUEUE_DEPTH_THRESHOLD, gt=0)
        kvCacheUtilThreshold: float = Field(default=DEFAULT_KV_CACHE_UTIL_THRESHOLD, gt=0, le=1)
        metricsStalenessThreshold: Duration = Field(
            default=DEFAULT_METRICS_STALENESS_THRESHOLD, gt=0
        )

    def __init__(
        self,
        name: str = "",
        queue_depth: int = DEFAULT_QUEUE_DEPTH_THRESHOLD,
        kv_util: float = DEFAULT_KV_CACHE_UTIL_THRESHOLD,
        staleness: float = DEFAULT_METRICS_STALENESS_THRESHOLD,
    ) -> None:
        super().__init__(name)
        self.queue_depth = queue_depth
        self.kv_util = kv_util
        self.staleness = staleness
        # Set by the server when metrics are not scraped (no data source): freshness
        # cannot be judged, so it is not required.
        self.require_fresh = True

    @classmethod
    def create(
        cls, name: str, params: UtilizationDetector.Params, handle: Handle
    ) -> UtilizationDetector:
        return cls(
            name,
            params.queueDepthThreshold,
            params.kvCacheUtilThreshold,
            params.metricsStalenessThreshold,
        )

    def has_capacity(self, endpoint: Endpoint, now: float) -> bool:
        m = endpoint.metrics
        if self.require_fresh and now - m.updated_at > self.staleness:
            return False
        return m.waiting < self.queue_depth and m.kv_usage < self.kv_util

    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        return not any(self.has_capacity(e, now) for e in endpoints)

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        """Pool saturation in [0, 1+]: the mean of each endpoint's worst utilisation ratio."""
        if not endpoints:
            return 1.0
        total = 0.0
        for e in endpoints:
            m = e.metrics
            total += max(m.waiting / self.queue_depth, m.kv_usage / self.kv_util)
        return total / len(endpoints)
