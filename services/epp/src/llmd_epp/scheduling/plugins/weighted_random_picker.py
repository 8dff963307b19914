"""`weighted-random-picker`: endpoints drawn without replacement with probability proportional
to their scores (A-Res weighted reservoir sampling: key = u^(1/score), highest keys win);
uniform when every score is zero. Keeps traffic spread while favouring good endpoints."""

from __future__ import annotations

import random

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, Picker
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register()
class WeightedRandomPicker(Picker):
    TYPE = "weighted-random-picker"

    class Params(PluginParams):
        maxNumOfEndpoints: int = Field(default=1, ge=1)

    def __init__(
        self, name: str = "", max_endpoints: int = 1, rng: random.Random | None = None
    ) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints
        self.rng = rng or random.Random()

    @classmethod
    def create(
        cls, name: str, params: WeightedRandomPicker.Params, handle: Handle
    ) -> WeightedRandomPicker:
        return cls(name, params.maxNumOfEndpoints, handle.rng)

    def pick(
        self, cycle: CycleState, request: LLMRequest, scored: list[tuple[Endpoint, float]]
    ) -> list[Endpoint]:
        k = min(self.max_endpoints, len(scored))
        rnd = self.rng.random
        if all(s <= 0 for _, s in scored):
            return [e for e, _ in self.rng.sample(scored, k)]
        keyed = []
        for e, s in scored:
            # Zero scores sort after every positive one, in random order among themselves.
            key = -1.0 + rnd() * 1e-9 if s <= 0 else rnd() ** (1.0 / s)
            keyed.append((key, e))
        keyed.sort(key=lambda ke: ke[0], reverse=True)
        return [e for _, e in keyed[:k]]
