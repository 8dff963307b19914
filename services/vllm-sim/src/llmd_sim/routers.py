"""Reference routing policies for `llmd_sim.cluster` (baselines for routing benchmarks)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmd_sim.cluster import EngineView
from llmd_sim.trace import TraceRequest


class RoundRobinRouter:
    def __init__(self) -> None:
        self._next = 0

    def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
        i = self._next % len(engines)
        self._next = i + 1
        return i


class RandomRouter:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
        return self._rng.randrange(len(engines))


def _load(e: EngineView) -> int:
    # vLLM's data-parallel balancing score.
    return e.num_waiting * 4 + e.num_running


class LeastLoadedRouter:
    """The engine with the fewest queued and running requests (KV usage breaks ties)."""

    def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
        best = min(engines, key=lambda e: (_load(e), e.kv_usage, e.index))
        return best.index


class PrefixAwareRouter:
    """The engine holding the longest prefix of the prompt, among the not-too-busy ones.

    Candidates are the engines whose load is within `slack` (absolute) or `rel_slack` (relative)
    of the least loaded one; among them the longest cached prefix wins, then the lighter load.
    With nothing cached anywhere this is least-loaded; under overload it stays balanced.
    """

    def __init__(self, slack: int = 4, rel_slack: float = 0.25) -> None:
        self.slack = slack
        self.rel_slack = rel_slack

    def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
        hashes = request.block_hashes or []
        loads = [_load(e) for e in engines]
        low = min(loads)
        limit = low + max(self.slack, self.rel_slack * low)
        best, best_key = 0, (-1, 0)
        for e, load in zip(engines, loads, strict=True):
            if load > limit:
                continue
            key = (e.cached_prefix_blocks(hashes) if hashes else 0, -load)
            if key > best_key:
                best, best_key = e.index, key
        return best
