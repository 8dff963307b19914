"""Prefix scoring: how many leading blocks of a request each candidate endpoint already holds.

Pure: it reads the holder sets an index `lookup` returned. A match is per (endpoint, data-parallel
rank), because a data-parallel rank is a cache of its own: the blocks must sit on one rank to be
reused. An endpoint's result is its best rank. A block counts once, on its best medium for that
rank, weighted by the medium's tier weight (GPU 1.0; CPU and storage lower, configurable).

Only the holders that change from one block to the next are looked at, so a 512-block prompt
held by 64 engines costs a few set operations per change along the prefix, not 32,768 steps.
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
    """A live (endpoint, rank) chain: totals so far, and its current medium since block `since`."""

    medium: str
    since: int
    matched: int = 0
    score: float = 0.0
    by_medium: dict[str, int] = field(default_factory=dict)


_BestMap = dict[tuple[str, int], str]
_CACHE_LIMIT = 4096


class PrefixScorer:
    """Longest-consecutive-prefix scorer with tier weights.

    Between two consecutive blocks only the holders that differ are looked at (two C-level set
    differences), so the cost grows with the number of changes along the prefix, not with
    blocks x holders. Per holder set, the best medium of each (endpoint, rank) is cached: the
    in-memory index hands out the same interned sets call after call.
    """

    __slots__ = ("_best_cache", "default_weight", "weights")

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
        self._best_cache: dict[HolderSet, _BestMap] = {}

    def _best(self, hs: HolderSet) -> _BestMap:
        """(endpoint, rank) -> its best medium in one holder set (cached per set)."""
        cache = self._best_cache
        try:
            hit = cache.get(hs)
        except TypeError:  # an unhashable collection from a custom backend
            hit = None
        if hit is not None:
            return hit
        weights, dw = self.weights, self.default_weight
        best: _BestMap = {}
        for h in hs:
            pair = (h.endpoint, h.rank)
            cur = best.get(pair)
            if cur is None or weights.get(h.medium, dw) > weights.get(cur, dw):
                best[pair] = h.medium
        if isinstance(hs, frozenset):
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[hs] = best
        return best

    def _close(self, acc: _Acc, pos: int) -> None:
        n = pos - acc.since
        if n > 0:
            acc.matched += n
            acc.score += self.weights.get(acc.medium, self.default_weight) * n
            acc.by_medium[acc.medium] = acc.by_medium.get(acc.medium, 0) + n
        acc.since = pos

    def score(
        self, holder_sets: Sequence[HolderSet], candidates: Sequence[str]
    ) -> list[EndpointScore]:
        """Scores of `candidates` (in their order) given the holder sets of a request's blocks.

        `holder_sets` is what `KVBlockIndex.lookup` returned for the request's block keys.
        """
        wanted = set(candidates)
        alive: dict[tuple[str, int], _Acc] = {}
        done: dict[tuple[str, int], _Acc] = {}
        close = self._close
        prev: HolderSet | None = None
        pos = 0
        for hs in holder_sets:
            if hs is prev:
                pos += 1
                continue
            if prev is None:
                for pair, medium in self._best(hs).items():
                    if pair[0] in wanted:
                        alive[pair] = _Acc(medium, 0)
                if not alive:
                    break
            elif hs != prev:
                try:
                    changed = prev ^ hs  # type: ignore[operator]
                except TypeError:  # plain collections from a custom backend
                    changed = set(prev) ^ set(hs)
                best = self._best(hs)
                for pair in {(h.endpoint, h.rank) for h in changed}:
                    acc = alive.get(pair)
                    if acc is None:
                        continue
                    now = best.get(pair)
                    if now is None:
                        close(acc, pos)
                        done[pair] = alive.pop(pair)
                    elif now != acc.medium:
                        close(acc, pos)
                        acc.medium = now
                if not alive:
                    break
            prev = hs
            pos += 1
        for acc in alive.values():
            close(acc, pos)
        done.update(alive)

        best_by_endpoint: dict[str, tuple[int, _Acc]] = {}
        for (endpoint, rank), acc in done.items():
            cur = best_by_endpoint.get(endpoint)
            # Longest, then heaviest, then the lowest rank: deterministic on ties.
            if cur is None or (acc.matched, acc.score, -rank) > (
                cur[1].matched,
                cur[1].score,
                -cur[0],
            ):
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
