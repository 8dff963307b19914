"""Prefix scoring: how many leading blocks of a request each candidate endpoint already holds.

Pure: it reads the holder sets an index `lookup` returned. A match is per (endpoint, data-parallel
rank), because a data-parallel rank is a cache of its own: the blocks must sit on one rank to be
reused. An endpoint's result is its best rank. A block counts once, on its best medium for that
rank, weighted by the medium's tier weight (GPU 1.0; CPU and storage lower, configurable).

Runs of consecutive blocks with equal holder sets (the common case: a shared prefix) are scored
once per run, so a 512-block prompt held by 64 engines costs a few set operations, not 32,768.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llmd_sdk.kvcache.index.base import (
    MEDIUM_CPU,
    MEDIUM_GPU,
    MEDIUM_STORAGE,
    NO_RANK,
    Holder,
    HolderSet,
)

DEFAULT_TIER_WEIGHTS: Mapping[str, float] = {
    MEDIUM_GPU: 1.0,
    MEDIUM_CPU: 0.8,
    MEDIUM_STORAGE: 0.5,
}


@dataclass(slots=True)
class EndpointScore:
    """The prefix match of one endpoint."""

    endpoint: str
    matched_blocks: int = 0
    score: float = 0.0
    blocks_by_medium: dict[str, int] = field(default_factory=dict)
    data_parallel_rank: int = NO_RANK


@dataclass(slots=True)
class _Acc:
    matched: int = 0
    score: float = 0.0
    by_medium: dict[str, int] = field(default_factory=dict)


class PrefixScorer:
    """Longest-consecutive-prefix scorer with tier weights."""

    __slots__ = ("default_weight", "weights")

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 0.5,
    ) -> None:
        merged = dict(DEFAULT_TIER_WEIGHTS)
        merged.update(weights or {})
        for medium, w in merged.items():
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"tier_weights.{medium}: must be within [0, 1], got {w}")
        self.weights = merged
        self.default_weight = default_weight

    def _best(self, hs: HolderSet, wanted: set[str] | None) -> dict[tuple[str, int], str]:
        """(endpoint, rank) -> its best medium in one holder set."""
        weights, dw = self.weights, self.default_weight
        best: dict[tuple[str, int], str] = {}
        for h in hs:
            if wanted is not None and h.endpoint not in wanted:
                continue
            pair = (h.endpoint, h.rank)
            cur = best.get(pair)
            if cur is None or weights.get(h.medium, dw) > weights.get(cur, dw):
                best[pair] = h.medium
        return best

    def score(
        self, holder_sets: Sequence[HolderSet], candidates: Sequence[str]
    ) -> list[EndpointScore]:
        """Scores of `candidates` (in their order) given the holder sets of a request's blocks.

        `holder_sets` is what `KVBlockIndex.lookup` returned for the request's block keys.
        """
        wanted = set(candidates)
        alive: dict[tuple[str, int], _Acc] = {}
        done: dict[tuple[str, int], _Acc] = {}
        weights, dw = self.weights, self.default_weight
        prev: HolderSet | None = None
        run = 0
        first = True

        def flush(hs: HolderSet, n: int) -> None:
            nonlocal first
            best = self._best(hs, wanted)
            if first:
                first = False
                for pair in best:
                    alive[pair] = _Acc()
            else:
                for pair in [p for p in alive if p not in best]:
                    done[pair] = alive.pop(pair)
            for pair, acc in alive.items():
                medium = best[pair]
                acc.matched += n
                acc.score += weights.get(medium, dw) * n
                acc.by_medium[medium] = acc.by_medium.get(medium, 0) + n

        for hs in holder_sets:
            if hs is prev or (prev is not None and hs == prev):
                run += 1
                continue
            if prev is not None:
                flush(prev, run)
                if not alive:
                    prev = None
                    break
            prev, run = hs, 1
        if prev is not None:
            flush(prev, run)
        done.update(alive)

        best_by_endpoint: dict[str, tuple[int, _Acc]] = {}
        for (endpoint, rank), acc in done.items():
            cur = best_by_endpoint.get(endpoint)
            if cur is None or (acc.matched, acc.score) > (cur[1].matched, cur[1].score):
                best_by_endpoint[endpoint] = (rank, acc)
        out: list[EndpointScore] = []
        for endpoint in candidates:
            found = best_by_endpoint.get(endpoint)
            if found is None:
                out.append(EndpointScore(endpoint))
            else:
                rank, acc = found
                out.append(EndpointScore(endpoint, acc.matched, acc.score, acc.by_medium, rank))
        return out


def holder_endpoints(holder_sets: Sequence[HolderSet]) -> list[str]:
    """Every endpoint in `holder_sets`, sorted (candidates when a caller gives none)."""
    seen: set[str] = set()
    prev: HolderSet | None = None
    for hs in holder_sets:
        if hs is not prev:
            seen.update(h.endpoint for h in hs)
            prev = hs
    return sorted(seen)


__all__ = ["DEFAULT_TIER_WEIGHTS", "EndpointScore", "Holder", "PrefixScorer", "holder_endpoints"]
