"""`no-hit-lru-scorer`: spreads cold requests (no prefix-cache hit anywhere) over endpoints,
least recently used for a cold request first, so new KV blocks grow evenly.

Cold is read from the prefix plugin's state (`prefixPluginName`, default
`prefix-cache-scorer`); without it the request counts as cold. Warm requests score 0.5
everywhere. Endpoints never given a cold request rank first; then oldest to newest. The LRU
holds `lruSize` endpoints (default 1024) and is updated in `pre_request` for the primary and
the `prefillProfile` targets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, EndpointListener, Handle, PreRequest, Scorer
from llmd_epp.scheduling.plugins.pd_decider import prefix_state
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest, SchedulingResult

DEFAULT_LRU_SIZE = 1024


@register()
class NoHitLRUScorer(Scorer, PreRequest, EndpointListener):
    TYPE = "no-hit-lru-scorer"

    class Params(PluginParams):
        prefixPluginName: str = "prefix-cache-scorer"
        prefillProfile: str = "prefill"
        lruSize: int = Field(default=DEFAULT_LRU_SIZE, ge=0)

    def __init__(
        self,
        name: str = "",
        prefix_plugin: str = "prefix-cache-scorer",
        prefill_profile: str = "prefill",
        lru_size: int = DEFAULT_LRU_SIZE,
    ) -> None:
        super().__init__(name)
        self.prefix_plugin = prefix_plugin
        self.prefill_profile = prefill_profile
        self.lru_size = lru_size or DEFAULT_LRU_SIZE
        self.lru: OrderedDict[str, None] = OrderedDict()  # oldest first
        self.handle: Handle | None = None

    @classmethod
    def create(cls, name: str, params: NoHitLRUScorer.Params, handle: Handle) -> NoHitLRUScorer:
        plugin = cls(name, params.prefixPluginName, params.prefillProfile, params.lruSize)
        plugin.handle = handle
        return plugin

    def _is_cold(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> bool:
        pm = prefix_state(request, self.prefix_plugin)
        if pm is None and self.handle is not None:
            # The prefix scorer may come later in the profile: let it compute its state now.
            producer = self.handle.plugin(self.prefix_plugin)
            match_for = getattr(producer, "match_for", None)
            if match_for is not None:
                pm = match_for(request, endpoints)
        return pm is None or pm.cold

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        cold = self._is_cold(request, endpoints)
        request.state[self.name] = cold
        n = len(endpoints)
        if not cold:
            return [0.5] * n
        if n == 1:
            return [1.0]
        position = {k: i for i, k in enumerate(self.lru)}
        never = [i for i, e in enumerate(endpoints) if e.key not in position]
        scores = [0.0] * n
        for rank, i in enumerate(never):
            scores[i] = 1.0 - rank / (n - 1)
        offset = len(never)
        for i, e in enumerate(endpoints):
            pos = position.get(e.key)
            if pos is not None:
                scores[i] = max(0.0, 1.0 - (offset + pos) / (n - 1))
        return scores

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        if request.state.get(self.name) is not True:
            return
        for profile in (result.primary_profile, self.prefill_profile):
            res = result.profile_results.get(profile)
            if res is None or not res.targets:
                continue
            key = res.targets[0].key
            self.lru.pop(key, None)
            self.lru[key] = None
            while len(self.lru) > self.lru_size:
                self.lru.popitem(last=False)

    def endpoint_removed(self, key: str) -> None:
        self.lru.pop(key, None)
