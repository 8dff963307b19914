"""`random-picker`: `maxNumOfEndpoints` (default 1) endpoints chosen uniformly at random."""

from __future__ import annotations

import random

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, Picker
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


@register()
class RandomPicker(Picker):
    TYPE = "random-picker"

    class Params(PluginParams):
        maxNumOfEndpoints: int = Field(default=1, ge=1)

    def __init__(
        self, name: str = "", max_endpoints: int = 1, rng: random.Random | None = None
    ) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints
        self.rng = rng or random.Random()

    @classmethod
    def create(cls, name: str, params: RandomPicker.Params, handle: Handle) -> RandomPicker:
        return cls(name, params.maxNumOfEndpoints, handle.rng)

    def pick(
        self, cycle: CycleState, request: LLMRequest, scored: list[tuple[Endpoint, float]]
    ) -> list[Endpoint]:
        k = min(self.max_endpoints, len(scored))
        return [e for e, _ in self.rng.sample(scored, k)]
