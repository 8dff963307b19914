"""A step-synchronous model of one DP/EP group, to compare rank-routing policies.

Not the cluster simulator (that is vllm-sim's discrete-event engine); a small, pure model of the
one effect rank routing is about. ``R`` data-parallel ranks step together (their MoE layers are
collectives), so a step lasts ``step_overhead_s + token_s * max_r tokens_r``. Each step a rank
runs one decode token per running request and fills the rest of its token budget with prefill
chunks, first come first served, admitting a new request only while fewer than ``max_running``
are decoding (its KV-cache capacity). A rank's prefix cache holds the shared prefixes of its most
recent ``cache_prefixes`` prefix groups (LRU); a request whose group is cached there skips that
prefix's prefill. Requests arrive as a Poisson process; their group follows a Zipf law.

Policies: ``least_load`` (fewest tokens in flight), ``prefix`` (most cached tokens, then least
load) and ``balanced`` (``rank_routing.choose_rank``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from llmd_expert_router.rank_routing import RankLoad, RankRequest, choose_rank, least_loaded_rank

RoutingPolicy = Literal["least_load", "prefix", "balanced"]


@dataclass(frozen=True)
class Workload:
    """Synthetic traffic: shared-prefix groups with unique suffixes."""

    num_requests: int = 2000
    arrival_rate: float = 40.0  # requests per second
    prefix_groups: int = 64
    prefix_zipf: float = 1.1
    prefix_tokens: int = 3000
    suffix_mean_tokens: int = 300
    decode_mean_tokens: int = 150
    seed: int = 0


@dataclass(frozen=True)
class Group:
    """The DP/EP group's shape and speed."""

    ranks: int = 8
    token_budget: int = 8192  # max batched tokens per rank and step
    cache_prefixes: int = 16  # prefix groups each rank keeps cached
    max_running: int = 128  # requests a rank holds in its batch (KV-cache capacity)
    step_overhead_s: float = 0.01
    token_s: float = 2e-5  # seconds per token of the busiest rank in a step


@dataclass
class _Req:
    arrival: float
    group: int
    prompt: int
    decode: int
    prefill_left: int = 0
    decode_left: int = 0
    first_token_at: float | None = None


@dataclass
class _Rank:
    prefill: deque[_Req] = field(default_factory=deque)
    decoding: list[_Req] = field(default_factory=list)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def in_flight(self) -> float:
        return float(
            sum(r.prefill_left + r.decode_left for r in self.prefill)
            + sum(r.decode_left for r in self.decoding)
        )


@dataclass(frozen=True)
class SimResult:
    policy: str
    makespan_s: float
    ttft_mean_s: float
    ttft_p90_s: float
    prefill_tokens_computed: int
    prompt_tokens: int
    step_imbalance: float  # sum over steps of max rank tokens / sum of mean rank tokens
    steps: int

    @property
    def cache_hit_fraction(self) -> float:
        return 1.0 - self.prefill_tokens_computed / max(1, self.prompt_tokens)


def make_requests(w: Workload) -> list[_Req]:
    rng = np.random.default_rng(w.seed)
    gaps = rng.exponential(1.0 / w.arrival_rate, size=w.num_requests)
    weights = 1.0 / np.arange(1, w.prefix_groups + 1) ** w.prefix_zipf
    groups = rng.choice(w.prefix_groups, size=w.num_requests, p=weights / weights.sum())
    suffix = 1 + rng.exponential(w.suffix_mean_tokens, size=w.num_requests).astype(int)
    decode = 1 + rng.exponential(w.decode_mean_tokens, size=w.num_requests).astype(int)
    t = np.cumsum(gaps)
    return [
        _Req(float(t[i]), int(groups[i]), w.prefix_tokens + int(suffix[i]), int(decode[i]))
        for i in range(w.num_requests)
    ]


def simulate(
    policy: RoutingPolicy,
    workload: Workload,
    group: Group,
    *,
    affinity_weight: float = 1.0,
) -> SimResult:
    """Serve ``workload`` on ``group`` routing with ``policy``; deterministic for a seed."""
    pending = deque(make_requests(workload))
    ranks = [_Rank() for _ in range(group.ranks)]
    now, steps, max_sum, mean_sum, computed = 0.0, 0, 0.0, 0.0, 0
    done: list[_Req] = []
    total = len(pending)
    while len(done) < total:
        if not any(r.prefill or r.decoding for r in ranks) and pending:
            now = max(now, pending[0].arrival)  # idle: jump to the next arrival
        while pending and pending[0].arrival <= now:
            req = pending.popleft()
            rid = _route(policy, req, ranks, workload.prefix_tokens, affinity_weight)
            cached = workload.prefix_tokens if req.group in ranks[rid].cache else 0
            req.prefill_left = req.prompt - cached
            req.decode_left = req.decode
            ranks[rid].prefill.append(req)
        tokens = [0] * group.ranks
        finished_prefill: list[tuple[int, _Req]] = []
        for i, rank in enumerate(ranks):
            budget = group.token_budget
            for req in rank.decoding:
                if budget == 0:
                    break
                req.decode_left -= 1
                budget -= 1
            while (
                rank.prefill
                and budget > 0
                and (
                    rank.prefill[0].prefill_left < rank.prefill[0].prompt
                    or len(rank.decoding) + 1 <= group.max_running
                )
            ):
                req = rank.prefill[0]
                chunk = min(budget, req.prefill_left)
                req.prefill_left -= chunk
                budget -= chunk
                computed += chunk
                if req.prefill_left == 0:
                    finished_prefill.append((i, rank.prefill.popleft()))
            tokens[i] = group.token_budget - budget
        step = group.step_overhead_s + group.token_s * max(tokens)
        now += step
        steps += 1
        max_sum += max(tokens)
        mean_sum += sum(tokens) / group.ranks
        for rank in ranks:
            still = [r for r in rank.decoding if r.decode_left > 0]
            done.extend(r for r in rank.decoding if r.decode_left == 0)
            rank.decoding = still
        for i, req in finished_prefill:
            req.first_token_at = now  # the prefill's last chunk yields the first token
            req.decode_left -= 1
            cache = ranks[i].cache
            cache[req.group] = None
            cache.move_to_end(req.group)
            while len(cache) > group.cache_prefixes:
                cache.popitem(last=False)
            (ranks[i].decoding if req.decode_left > 0 else done).append(req)
    ttft = np.array([r.first_token_at - r.arrival for r in done if r.first_token_at is not None])
    return SimResult(
        policy=policy if policy != "balanced" else f"balanced(w={affinity_weight:g})",
        makespan_s=now,
        ttft_mean_s=float(ttft.mean()),
        ttft_p90_s=float(np.percentile(ttft, 90)),
        prefill_tokens_computed=computed,
        prompt_tokens=sum(r.prompt for r in done),
        step_imbalance=max_sum / mean_sum if mean_sum else 1.0,
        steps=steps,
    )


def _route(
    policy: RoutingPolicy, req: _Req, ranks: list[_Rank], prefix: int, affinity_weight: float
) -> int:
    loads = [RankLoad(i, r.in_flight()) for i, r in enumerate(ranks)]
    cached = {i: prefix for i, r in enumerate(ranks) if req.group in r.cache}
    if policy == "least_load":
        return least_loaded_rank(loads)
    if policy == "prefix":
        return min((-cached.get(i, 0), load.tokens_in_flight, i) for i, load in enumerate(loads))[2]
    request = RankRequest(req.prompt, cached, req.decode)
    return choose_rank(request, loads, affinity_weight=affinity_weight).rank
