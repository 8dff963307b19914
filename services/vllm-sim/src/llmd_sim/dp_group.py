"""One data-parallel group of a wide-EP deployment in virtual time: ranks that step in lockstep.

In wide expert parallelism the attention layers run data-parallel (one engine core per DP rank)
while every MoE layer is a collective over all ranks of the EP group. A rank cannot start its
next forward pass before the others finish theirs, so the group advances in *group steps*: every
rank with work schedules its own batch (vLLM's scheduler, its own prefix cache), and the group
step lasts as long as the slowest rank's batch takes. A rank with a light batch waits for the
busiest one; that is why routing inside the group balances tokens, not requests. (Idle ranks run
dummy batches in vLLM; here they cost nothing, which changes no group step's length.)

`DPGroupSimulator.run` replays a trace: each arrival is given to a `RankRouter`, which picks the
rank (what the EPP's `x-data-parallel-rank` header does); requests that arrive during a group
step join at the next one, after the router has seen the state the step left. Time stamps
(first token, finish) are the group step's end, not the rank's own.

Reference rank routers (baselines and the SDK's balancer): `LeastRequestsRankRouter` (vLLM's
internal DP balancing score, waiting * 4 + running), `LeastTokensRankRouter` (fewest tokens in
flight, as the router charged them), `PrefixFirstRankRouter` (most cached prompt tokens, then
fewest tokens in flight) and `BalancedRankRouter` (`llmd_sdk.dp_rank` with the ranks'
GPU prefix hits, which is what kvmanager's index would report).

Not modelled: P/D remote KV loads inside a group (no wake-ups), and MoE imbalance between ranks
(the step-time model is the dense per-rank one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from llmd_sdk.dp_rank import RankBalancer, RankRequest, least_loaded_rank, work_on

from llmd_sim.cluster import (
    ClusterResult,
    ClusterSimulator,
    EngineView,
    RequestRecord,
    record_finished,
)
from llmd_sim.engine import EngineConfig, StepResult
from llmd_sim.engine.kv_cache import Hasher
from llmd_sim.latency import LatencyModel
from llmd_sim.trace import TraceRequest


class RankRouter(Protocol):
    """Picks the rank of the group for a request and hears when requests finish."""

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int: ...

    def finished(self, request_id: str, rank: int, now: float) -> None: ...


@dataclass(slots=True)
class GroupStep:
    """One lockstep iteration of the group."""

    start: float
    duration: float  # max of `rank_durations`
    rank_durations: list[float]  # 0 for ranks that had nothing to do
    results: list[StepResult | None]  # per rank; None where the rank had no work

    @property
    def end(self) -> float:
        return self.start + self.duration


class DPGroupSimulator(ClusterSimulator):
    """`num_ranks` engine cores of one EP group stepping together, behind a `RankRouter`."""

    def __init__(
        self,
        num_ranks: int,
        config: EngineConfig,
        latency: LatencyModel,
        router: RankRouter,
        *,
        hasher: Hasher | None = None,
        output_vocab: int = 32000,
        seed: int = 0,
    ) -> None:
        if num_ranks < 1:
            raise ValueError("num_ranks: must be at least 1")
        super().__init__(
            num_ranks, config, latency, router, hasher=hasher, output_vocab=output_vocab, seed=seed
        )
        self.rank_router = router
        self.group_steps = 0
        # Sum over group steps of the busiest rank's time and of the mean rank's time: their
        # ratio is how much of the group's time lockstep wastes.
        self.busy_max_s = 0.0
        self.busy_mean_s = 0.0

    def has_work(self) -> bool:
        return any(e.has_work() for e in self.engines)

    def group_step(self, now: float) -> GroupStep:
        """Step every rank with work at `now`; the group step ends when the slowest rank ends."""
        results: list[StepResult | None] = []
        durations: list[float] = []
        for core in self.engines:
            if core.has_work():
                done = core.step(now)
                results.append(done)
                durations.append(done.duration)
            else:
                results.append(None)
                durations.append(0.0)
        step = GroupStep(now, max(durations), durations, results)
        end = step.end
        for res in results:
            if res is None:
                continue
            # The rank's tokens leave the group only when the collective step completes.
            for r in res.first_tokens:
                r.first_token_time = end
            for r in res.finished:
                r.finish_time = end
        self.group_steps += 1
        self.busy_max_s += step.duration
        self.busy_mean_s += sum(durations) / len(durations)
        return step

    def run(self, trace: Iterable[TraceRequest]) -> ClusterResult:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        engines, router = self.engines, self.rank_router
        records: list[RequestRecord] = []
        per_rank = [0] * len(engines)
        steps = 0
        now = 0.0
        pending = iter(trace)
        nxt: TraceRequest | None = next(pending, None)
        index = 0
        while True:
            # Admit everything that has arrived by now (routers see the last step's state).
            while nxt is not None and nxt.arrival <= now:
                self._admit(nxt, index, per_rank)
                index += 1
                nxt = next(pending, None)
            if not self.has_work():
                if nxt is None:
                    break
                now = nxt.arrival  # idle group: jump to the next arrival
                continue
            step = self.group_step(now)
            steps += sum(1 for r in step.results if r is not None)
            now = step.end
            for rank, res in enumerate(step.results):
                if res is None:
                    continue
                record_finished(records, res.finished, rank)
                for r in res.finished:
                    router.finished(r.request_id, rank, now)
        return ClusterResult(
            records=records,
            num_engines=len(engines),
            sim_time_s=now,
            cpu_time_s=time.process_time() - cpu0,
            wall_time_s=time.perf_counter() - wall0,
            steps=steps,
            per_engine_requests=per_rank,
        )

    @property
    def lockstep_overhead(self) -> float:
        """Busiest-rank time / mean-rank time over all group steps (1 = perfectly balanced)."""
        return self.busy_max_s / self.busy_mean_s if self.busy_mean_s > 0 else math.nan

    def _admit(self, tr: TraceRequest, index: int, per_rank: list[int]) -> None:
        if tr.block_hashes is None:
            tr.block_hashes = self._hash_prompt(tr)
        rank = self.rank_router.route(tr, self.views)
        if not 0 <= rank < len(self.engines):
            raise ValueError(f"router returned rank {rank}, not in [0, {len(self.engines)})")
        self.engines[rank].add_request(self._to_request(tr, index))
        per_rank[rank] += 1
        tr.block_hashes = None  # the engine's request holds its own copy


class LeastRequestsRankRouter:
    """vLLM's own DP load balancing: the lowest ``waiting * 4 + running`` (then the lower rank)."""

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int:
        return min(ranks, key=lambda v: (v.num_waiting * 4 + v.num_running, v.index)).index

    def finished(self, request_id: str, rank: int, now: float) -> None:
        return None


class _TokenCharges:
    """Tokens in flight per rank as a router sees them: charged at routing, released when the
    request finishes (what an EPP can track through its request lifecycle hooks)."""

    def __init__(self, balancer: RankBalancer) -> None:
        self.balancer = balancer
        self.charges: dict[str, tuple[int, float]] = {}

    def record(self, request_id: str, rank: int, tokens: float) -> None:
        """`tokens` were charged to `rank` for `request_id` (already added to the balancer)."""
        self.charges[request_id] = (rank, tokens)

    def release(self, request_id: str) -> None:
        entry = self.charges.pop(request_id, None)
        if entry is not None:
            self.balancer.release(*entry)


class LeastTokensRankRouter:
    """Plain least-load: the rank with the fewest tokens in flight (prompt + expected decode),
    blind to prefix caches."""

    def __init__(self, num_ranks: int) -> None:
        self.balancer = RankBalancer(list(range(num_ranks)))
        self._charges = _TokenCharges(self.balancer)

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int:
        rank = least_loaded_rank(self.balancer.loads())
        tokens = float(request.num_prompt_tokens + request.output_len)
        self.balancer.charge(rank, tokens)
        self._charges.record(request.request_id, rank, tokens)
        return rank

    def finished(self, request_id: str, rank: int, now: float) -> None:
        self._charges.release(request_id)


def _cached_per_rank(request: TraceRequest, ranks: Sequence[EngineView]) -> dict[int, int]:
    """Prompt tokens each rank holds in its GPU prefix cache (leading full blocks)."""
    prompt = request.num_prompt_tokens
    hashes = request.block_hashes or ()
    cached: dict[int, int] = {}
    if hashes:
        for view in ranks:
            n = view.cached_prefix_blocks(hashes) * view.block_size
            if n:
                cached[view.index] = min(prompt, n)
    return cached


class PrefixFirstRankRouter:
    """Prefix affinity alone: the rank caching the most prompt tokens, then the fewest tokens in
    flight (what a prefix scorer with a load tie-break does)."""

    def __init__(self, num_ranks: int) -> None:
        self.balancer = RankBalancer(list(range(num_ranks)))
        self._charges = _TokenCharges(self.balancer)

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int:
        cached = _cached_per_rank(request, ranks)
        rank_request = RankRequest(request.num_prompt_tokens, cached, request.output_len)
        loads = self.balancer.loads()
        rank = min((-cached.get(r.rank, 0), r.tokens_in_flight, r.rank) for r in loads)[2]
        tokens = work_on(rank_request, rank)
        self.balancer.charge(rank, tokens)
        self._charges.record(request.request_id, rank, tokens)
        return rank

    def finished(self, request_id: str, rank: int, now: float) -> None:
        self._charges.release(request_id)


class BalancedRankRouter:
    """`llmd_sdk.dp_rank.RankBalancer`: bottleneck plus affinity cost over tokens in flight, with
    each rank's cached prefix of the prompt (leading blocks in its GPU prefix cache)."""

    def __init__(
        self, num_ranks: int, *, affinity_weight: float = 1.0, queue_weight: float = 0.0
    ) -> None:
        self.balancer = RankBalancer(
            list(range(num_ranks)), affinity_weight=affinity_weight, queue_weight=queue_weight
        )
        self._charges = _TokenCharges(self.balancer)

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int:
        cached = _cached_per_rank(request, ranks)
        rank_request = RankRequest(request.num_prompt_tokens, cached, request.output_len)
        choice = self.balancer.assign(rank_request)
        tokens = work_on(rank_request, choice.rank)
        self._charges.record(request.request_id, choice.rank, tokens)
        return choice.rank

    def finished(self, request_id: str, rank: int, now: float) -> None:
        self._charges.release(request_id)


__all__ = [
    "BalancedRankRouter",
    "DPGroupSimulator",
    "GroupStep",
    "LeastRequestsRankRouter",
    "LeastTokensRankRouter",
    "PrefixFirstRankRouter",
    "RankRouter",
]
