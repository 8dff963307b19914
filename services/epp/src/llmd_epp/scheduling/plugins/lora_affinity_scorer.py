"""`lora-affinity-scorer`: 1.0 where the request's adapter is running, 0.8 where another adapter
fits (running + waiting < max), 0.6 where it is waiting to load, else 0."""

from __future__ import annotations

from collections.abc import Sequence

from llmd_epp.scheduling.framework import CycleState, Scorer
from llmd_epp.scheduling.registry import register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register()
class LoraAffinityScorer(Scorer):
    TYPE = "lora-affinity-scorer"

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        adapter = request.lora_adapter or request.target_model or request.model
        out = []
        for e in endpoints:
            m = e.metrics
            if adapter in m.active_adapters:
                out.append(1.0)
            elif len(m.active_adapters) + len(m.waiting_adapters) < m.max_adapters:
                out.append(0.8)
            elif adapter in m.waiting_adapters:
                out.append(0.6)
            else:
                out.append(0.0)
        return out
