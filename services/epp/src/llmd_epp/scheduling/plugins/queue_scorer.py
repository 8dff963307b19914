"""`queue-scorer`: shorter waiting queue, higher score (min-max over the candidates)."""

from __future__ import annotations

from collections.abc import Sequence

from llmd_epp.scheduling.framework import CycleState, Scorer
from llmd_epp.scheduling.registry import register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register()
class QueueScorer(Scorer):
    TYPE = "queue-scorer"

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        queues = [e.metrics.waiting for e in endpoints]
        lo, hi = min(queues), max(queues)
        if hi == lo:
            return [1.0] * len(queues)
        span = hi - lo
        return [(hi - q) / span for q in queues]
