"""`max-score-picker`: the `maxNumOfEndpoints` (default 1) highest-scoring endpoints, best
first; ties are broken at random. More than one endpoint gives Envoy a fallback list."""

from __future__ import annotations

import random

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, Picker
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register()
class MaxScorePicker(Picker):
    TYPE = "max-score-picker"

    class Params(PluginParams):
        maxNumOfEndpoints: int = Field(default=1, ge=1)

    def __init__(
        self, name: str = "", max_endpoints: int = 1, rng: random.Random | None = None
    ) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints
        self.rng = rng or random.Random()

    @classmethod
    def create(cls, name: str, params: MaxScorePicker.Params, handle: Handle) -> MaxScorePicker:
        return cls(name, params.maxNumOfEndpoints, handle.rng)

    def pick(
        self, cycle: CycleState, request: LLMRequest, scored: list[tuple[Endpoint, float]]
    ) -> list[Endpoint]:
        if self.max_endpoints == 1:
            best = max(s for _, s in scored)
            top = [e for e, s in scored if s == best]
            return [top[0] if len(top) == 1 else self.rng.choice(top)]
        shuffled = list(scored)
        self.rng.shuffle(shuffled)
        shuffled.sort(key=lambda es: es[1], reverse=True)  # stable: ties stay shuffled
        return [e for e, _ in shuffled[: self.max_endpoints]]
