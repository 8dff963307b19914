"""`prefix-cache-scorer`: approximate prefix-cache affinity from the EPP's own routing history.

Score = leading blocks of the request an endpoint is believed to hold / blocks in the request.
After each decision the request's block hashes are recorded for the chosen endpoint(s) (decode
and, in P/D, prefill); an endpoint's LRU is bounded by `lruCapacityPerServer`, or with
`autoTune` by the engine's KV-cache block count. Parameters as upstream: `blockSizeTokens`
(default 16, times 4 characters per token), legacy `blockSize` (characters) or llm-d's
`hashBlockSize`, `maxPrefixBlocksToMatch` (256) or `maxPrefixTokensToMatch`,
`lruCapacityPerServer` (31250), `autoTune` (true).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, EndpointListener, Handle, PreRequest, Scorer
from llmd_epp.scheduling.prefix_index import (
    AVERAGE_CHARS_PER_TOKEN,
    ApproxPrefixIndex,
    PrefixMatch,
    hash_prompt,
)
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest, SchedulingResult

DEFAULT_BLOCK_SIZE_TOKENS = 16
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250


@register()
class PrefixCacheScorer(Scorer, PreRequest, EndpointListener):
    TYPE = "prefix-cache-scorer"

    class Params(PluginParams):
        autoTune: bool = True
        blockSizeTokens: int = Field(default=0, ge=0)
        blockSize: int = Field(default=0, ge=0)
        hashBlockSize: int = Field(default=0, ge=0)
        maxPrefixBlocksToMatch: int = Field(default=DEFAULT_MAX_PREFIX_BLOCKS, ge=0)
        maxPrefixTokensToMatch: int = Field(default=0, ge=0)
        lruCapacityPerServer: int = Field(default=DEFAULT_LRU_CAPACITY_PER_SERVER, ge=0)

    def __init__(
        self,
        name: str = "",
        block_chars: int = DEFAULT_BLOCK_SIZE_TOKENS * AVERAGE_CHARS_PER_TOKEN,
        max_blocks: int = DEFAULT_MAX_PREFIX_BLOCKS,
        lru_capacity: int = DEFAULT_LRU_CAPACITY_PER_SERVER,
        auto_tune: bool = True,
        block_chars_explicit: bool = False,
    ) -> None:
        super().__init__(name)
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.auto_tune = auto_tune
        # An explicit block size wins over the engines' reported one.
        self._fixed_block = block_chars_explicit
        self.index = ApproxPrefixIndex(lru_capacity or DEFAULT_LRU_CAPACITY_PER_SERVER)

    @classmethod
    def create(
        cls, name: str, params: PrefixCacheScorer.Params, handle: Handle
    ) -> PrefixCacheScorer:
        if params.blockSizeTokens:
            chars, explicit = params.blockSizeTokens * AVERAGE_CHARS_PER_TOKEN, True
        elif params.blockSize:
            chars, explicit = params.blockSize, True
        elif params.hashBlockSize:
            chars, explicit = params.hashBlockSize, True
        else:
            chars, explicit = DEFAULT_BLOCK_SIZE_TOKENS * AVERAGE_CHARS_PER_TOKEN, False
        max_blocks = params.maxPrefixBlocksToMatch or DEFAULT_MAX_PREFIX_BLOCKS
        if params.maxPrefixTokensToMatch:
            max_blocks = max(1, params.maxPrefixTokensToMatch * AVERAGE_CHARS_PER_TOKEN // chars)
        return cls(
            name,
            block_chars=chars,
            max_blocks=max_blocks,
            lru_capacity=params.lruCapacityPerServer,
            auto_tune=params.autoTune,
            block_chars_explicit=explicit,
        )

    def _block_chars(self, endpoints: Sequence[Endpoint]) -> int:
        if self.auto_tune and not self._fixed_block and endpoints:
            bs = endpoints[0].metrics.block_size
            if bs > 0:
                return bs * AVERAGE_CHARS_PER_TOKEN
        return self.block_chars

    def match_for(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> PrefixMatch:
        """The request's hashes and matches, computed once per request."""
        found = request.state.get(self.name)
        if isinstance(found, PrefixMatch):
            return found
        block = self._block_chars(endpoints)
        hashes = hash_prompt(
            request.user_input(),
            request.target_model or request.model,
            request.cache_salt,
            block,
            self.max_blocks,
        )
        pm = PrefixMatch(
            total_blocks=len(hashes),
            block_chars=block,
            matches=self.index.match(hashes),
            hashes=hashes,
        )
        request.state[self.name] = pm
        return pm

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        pm = self.match_for(request, endpoints)
        total = pm.total_blocks
        if not total or not pm.matches:
            return [0.0] * len(endpoints)
        m = pm.matches
        return [m.get(e.key, 0) / total for e in endpoints]

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        pm = request.state.get(self.name)
        if not isinstance(pm, PrefixMatch) or not pm.hashes:
            return
        seen: set[str] = set()
        for prof in result.profile_results.values():
            target = prof.targets[0]
            if target.key in seen:
                continue
            seen.add(target.key)
            cap = target.metrics.num_gpu_blocks if self.auto_tune else 0
            self.index.add(pm.hashes, target.key, cap)

    def endpoint_removed(self, key: str) -> None:
        self.index.remove_endpoint(key)
