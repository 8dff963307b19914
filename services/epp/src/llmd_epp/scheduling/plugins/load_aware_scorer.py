"""`load-aware-scorer`: an empty queue scores 0.5; a queue of `threshold` (default 128) or more
scores 0, linearly in between."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, Scorer
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest

QUEUE_THRESHOLD_DEFAULT = 128


@register()
class LoadAwareScorer(Scorer):
    TYPE = "load-aware-scorer"

    class Params(PluginParams):
        threshold: int = Field(default=QUEUE_THRESHOLD_DEFAULT, gt=0)

    def __init__(self, name: str = "", threshold: int = QUEUE_THRESHOLD_DEFAULT) -> None:
        super().__init__(name)
        self.threshold = float(threshold)

    @classmethod
    def create(cls, name: str, params: LoadAwareScorer.Params, handle: Handle) -> LoadAwareScorer:
        return cls(name, params.threshold)

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        t = self.threshold
        return [
            0.5 if e.metrics.waiting <= 0 else 0.5 * (1.0 - min(e.metrics.waiting, t) / t)
            for e in endpoints
        ]
