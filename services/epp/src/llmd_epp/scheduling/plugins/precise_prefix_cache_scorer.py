"""`precise-prefix-cache-scorer`: prefix-cache affinity from what the engines report holding.

kvmanager follows every engine's KV-cache events and answers, per endpoint, how many leading
blocks of the request it holds (vLLM's real block hashes, GPU/CPU tiers weighted). The scorer
gets those numbers from a `PrefixScoreSource`: kvmanager's `KVIndex.Score` over gRPC (the server
fetches them in the async `prepare` step before scheduling), or an in-process index that
answers synchronously (a simulator, or kvmanager's library). Because the index is shared, any
number of EPP replicas see the same prefix state: that is the horizontal mode.

Scores are min-max normalised over the candidates (all equal and positive: 1; none: 0), as
upstream. Parameters: upstream's `indexerConfig` and `kvEventsConfig` (accepted for
compatibility; the block size and hash seed are kvmanager's concern here), plus
`kvmanagerAddress` (default: the EPP's `--kvmanager-address`) and `timeout` (default 100ms,
after which the request is scored without prefix data).

`speculativeIndexing` (upstream's, default false; also read from `indexerConfig`) records each
decision's prefix for the picked endpoint for `speculativeTTL` (default 2s): until the engine's
KV events report the blocks, the next requests sharing the prefix still find it there (see
`speculative_index`). An endpoint's score is then the larger of its reported and its
speculative share of the request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmd_epp.scheduling.framework import CycleState, Handle, PrepareData, PreRequest, Scorer
from llmd_epp.scheduling.prefix_index import AVERAGE_CHARS_PER_TOKEN, PrefixMatch, request_hashes
from llmd_epp.scheduling.registry import Duration, PluginParams, register
from llmd_epp.scheduling.speculative_index import SpeculativeIndex
from llmd_epp.scheduling.types import Endpoint, LLMRequest, SchedulingResult

DEFAULT_TIMEOUT = 0.1
DEFAULT_SPECULATIVE_TTL = 2.0
# Speculative entries hash 16-token blocks of the request text (4 characters per token), the
# first 256 of them, as the approximate scorer does by default.
_SPECULATIVE_BLOCK_CHARS = 16 * AVERAGE_CHARS_PER_TOKEN
_SPECULATIVE_MAX_BLOCKS = 256


@dataclass(slots=True)
class PrefixScores:
    """One index answer: per endpoint, matched leading blocks and the tier-weighted score."""

    matched: dict[str, int] = field(default_factory=dict)
    weighted: dict[str, float] = field(default_factory=dict)
    total_blocks: int = 0
    block_size: int = 16  # tokens
    # endpoint -> data-parallel rank -> matched blocks, where the index knows ranks (engines
    # publishing KV events with a data_parallel_rank); `dp-rank-balancer` reads it.
    ranks: dict[str, dict[int, int]] = field(default_factory=dict)


class PrefixScoreSource(Protocol):
    """Answers prefix matches for a request over candidate endpoint keys. `score` may be a
    plain method (in-process index) or a coroutine function (remote kvmanager)."""

    def score(
        self, request: LLMRequest, endpoints: Sequence[str]
    ) -> PrefixScores | Awaitable[PrefixScores]: ...


@register()
class PrecisePrefixCacheScorer(Scorer, PrepareData, PreRequest):
    TYPE = "precise-prefix-cache-scorer"

    class Params(PluginParams):
        indexerConfig: dict[str, Any] | None = None
        kvEventsConfig: dict[str, Any] | None = None
        kvmanagerAddress: str = ""
        timeout: Duration = DEFAULT_TIMEOUT
        speculativeIndexing: bool | None = None
        speculativeTTL: Duration = DEFAULT_SPECULATIVE_TTL

    def __init__(
        self,
        name: str = "",
        source: PrefixScoreSource | None = None,
        speculative_ttl: float | None = None,
    ) -> None:
        super().__init__(name)
        self.source = source
        # None: speculative indexing off.
        self.speculative = SpeculativeIndex(speculative_ttl) if speculative_ttl else None
        self.errors = 0
        # Called on each failed or timed-out score call (the EPP points it at its
        # llm_d_epp_kvindex_errors_total counter).
        self.on_error: Callable[[], None] | None = None

    @classmethod
    def create(
        cls, name: str, params: PrecisePrefixCacheScorer.Params, handle: Handle
    ) -> PrecisePrefixCacheScorer:
        source = handle.deps.get("prefix_score_source")
        factory = handle.deps.get("kvindex_client_factory")
        if source is None and factory is not None:
            address = params.kvmanagerAddress or handle.deps.get("kvmanager_address", "")
            if not address:
                raise ValueError("parameters.kvmanagerAddress: no kvmanager address configured")
            source = factory(address, params.timeout)
        speculative = params.speculativeIndexing
        if speculative is None:  # upstream has carried it in indexerConfig too
            speculative = bool((params.indexerConfig or {}).get("speculativeIndexing", False))
        if speculative and params.speculativeTTL <= 0:
            raise ValueError("parameters.speculativeTTL: must be positive")
        return cls(name, source, params.speculativeTTL if speculative else None)

    @property
    def is_async(self) -> bool:
        return self.source is not None and inspect.iscoroutinefunction(self.source.score)

    def _store(self, request: LLMRequest, scores: PrefixScores) -> PrefixMatch:
        pm = PrefixMatch(
            total_blocks=scores.total_blocks,
            block_chars=scores.block_size * AVERAGE_CHARS_PER_TOKEN,
            matches={k: v for k, v in scores.matched.items() if v > 0},
        )
        request.state[self.name] = pm
        request.state[self.name + "#weighted"] = scores.weighted
        request.state[self.name + "#ranks"] = (scores.ranks, scores.block_size)
        return pm

    def rank_matches(
        self, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> tuple[dict[str, dict[int, int]], int]:
        """Per endpoint and data-parallel rank, matched leading blocks, and the block size in
        tokens ({} when the index has no rank data or the request has no prefix data)."""
        self.match_for(request, endpoints)
        found = request.state.get(self.name + "#ranks")
        if isinstance(found, tuple):
            return found
        return {}, 16

    async def prepare(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        if self.source is None or not self.is_async:
            return
        try:
            result = self.source.score(request, [e.key for e in endpoints])
            assert inspect.isawaitable(result)
            scores = await result
        except Exception:
            # kvmanager down or slow: schedule without prefix data rather than fail.
            self.errors += 1
            if self.on_error is not None:
                self.on_error()
            return
        self._store(request, scores)

    def match_for(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> PrefixMatch | None:
        found = request.state.get(self.name)
        if isinstance(found, PrefixMatch):
            return found
        if self.source is None or self.is_async:
            return None  # not prepared (or the fetch failed)
        result = self.source.score(request, [e.key for e in endpoints])
        assert isinstance(result, PrefixScores)
        return self._store(request, result)

    def _speculative_hashes(self, request: LLMRequest) -> list[int]:
        return request_hashes(
            request, self.name + "#speculative", _SPECULATIVE_BLOCK_CHARS, _SPECULATIVE_MAX_BLOCKS
        )

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        pm = self.match_for(request, endpoints)
        raw = [0.0] * len(endpoints)
        if pm is not None and pm.total_blocks:
            weighted: dict[str, float] = request.state.get(self.name + "#weighted") or {}
            total = pm.total_blocks
            raw = [weighted.get(e.key, float(pm.matches.get(e.key, 0))) / total for e in endpoints]
        if self.speculative is not None:
            hashes = self._speculative_hashes(request)
            guessed = self.speculative.match(hashes, cycle.now)
            if guessed:
                n = len(hashes)
                raw = [
                    max(r, guessed.get(e.key, 0) / n) for r, e in zip(raw, endpoints, strict=True)
                ]
        hi, lo = max(raw, default=0.0), min(raw, default=0.0)
        if hi <= 0:
            return [0.0] * len(raw)
        if hi == lo:
            return [1.0] * len(raw)
        span = hi - lo
        return [(r - lo) / span for r in raw]

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        if self.speculative is None:
            return
        hashes = self._speculative_hashes(request)
        for key in {prof.targets[0].key for prof in result.profile_results.values()}:
            self.speculative.add(hashes, key, now)
