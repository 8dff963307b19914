"""`kv-cache-utilization-scorer` (older name `kv-cache-scorer`): 1 - KV-cache usage."""

from __future__ import annotations

from collections.abc import Sequence

from llmd_epp.scheduling.framework import CycleState, Scorer
from llmd_epp.scheduling.registry import register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register("kv-cache-scorer")
class KVCacheUtilizationScorer(Scorer):
    TYPE = "kv-cache-utilization-scorer"

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        out = [1.0 - e.metrics.kv_usage for e in endpoints]
        if any(v < 0.0 or v > 1.0 for v in out):  # a misreporting engine
            out = [min(1.0, max(0.0, v)) for v in out]
        return out
