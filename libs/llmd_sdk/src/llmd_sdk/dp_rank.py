"""Rank-aware request routing for wide-EP pools: which data-parallel rank gets a request.

Shared by the EPP's ``dp-rank-balancer`` plugin, the expert-router (which re-exports it as
``llmd_expert_router.rank_routing``) and the simulators, since services may not import each
other.

In a wide-EP deployment the attention layers run data-parallel (one engine core per DP rank)
and every MoE layer is a collective over all ranks of the EP group, so the ranks step together
and each step lasts as long as its busiest rank needs. vLLM serves a request on a chosen rank
when it carries the ``X-data-parallel-rank`` header. Routing should therefore keep the busiest
rank as light as possible, while still sending a request where its prompt prefix is cached
(cached tokens are not recomputed).

Cost model (all in tokens). For rank ``r`` with ``L_r`` tokens in flight (prefill tokens not yet
computed plus tokens of running decodes, as the caller measures them), a request costs
``w_r = prompt_tokens - cached_tokens[r] + decode_tokens`` there. Placing it on ``r`` changes

    J = max_r L_r + affinity_weight * sum_r L_r

by ``dJ(r) = max(M, L_r + w_r) - M + affinity_weight * w_r``, with ``M = max L``. The first term
is the growth of the group's bottleneck (what the next steps cost); the second is the work added
to the group as a whole (capacity later requests no longer have), which is where prefix affinity
pays: a cache hit lowers ``w_r``. With the default weight 1, a request leaves the rank holding
its prefix only when staying would raise the bottleneck by more than the recomputation that
moving costs. With ``affinity_weight = 0`` the rule
is pure bottleneck balancing, with cached tokens only breaking ties; large values approach
"most cached tokens first". The chosen rank minimises ``dJ``, ties going to the lower
``L_r + w_r``, then the lower rank id.

The queue term. ``dJ`` alone never moves a request off the rank holding its prefix while that
rank is the bottleneck: staying raises the peak by the request's own (small, cached) work,
however deep the queue there already is. With fewer hot prefixes than ranks that piles the
traffic onto a few ranks. ``queue_weight`` adds ``queue_weight * (L_r + w_r)``, the tokens the
request waits behind on ``r`` (its own latency), so a rank whose queue has grown by more than
about ``(recomputation) / queue_weight`` tokens beyond another's spills to it. The default 0
keeps the original rule; the EPP plugin uses 0.5 (vllm-sim's DP-group simulation:
``benchmarks/rank_routing_des.py``).

Pure logic, no I/O: the EPP's plugin feeds it rank loads and prefix hits and sets
``DP_RANK_HEADER`` to the chosen rank; the discrete-event simulators drive ``RankBalancer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DP_RANK_HEADER = "X-data-parallel-rank"
"""Request header that pins a request to a data-parallel rank in vLLM (read case-insensitively)."""


@dataclass(frozen=True)
class RankLoad:
    """A rank of one EP group and the tokens it has in flight."""

    rank: int
    tokens_in_flight: float


@dataclass(frozen=True)
class RankRequest:
    """What a request would cost: its prompt, the prefix cached on each rank, its decode.

    Attributes:
        prompt_tokens: prompt length.
        cached_tokens: prompt tokens already in each rank's prefix cache (absent: 0).
        decode_tokens: expected generated tokens (the same on every rank; it matters through the
            bottleneck term).
    """

    prompt_tokens: int
    cached_tokens: Mapping[int, int]
    decode_tokens: int = 0


@dataclass(frozen=True)
class RankChoice:
    """The decision with its reasons.

    Attributes:
        rank: the chosen rank.
        costs: ``dJ`` of each rank (lower is better).
        scores: ``costs`` mapped to ``[0, 1]``, 1 for the best rank, 0 for the worst (all 1 when
            every rank costs the same): what an EPP scorer returns.
    """

    rank: int
    costs: dict[int, float]
    scores: dict[int, float]


def choose_rank(
    request: RankRequest,
    ranks: Sequence[RankLoad],
    *,
    affinity_weight: float = 1.0,
    queue_weight: float = 0.0,
) -> RankChoice:
    """Pick the rank of one EP group for ``request`` (see the module docstring)."""
    _validate(request, ranks, affinity_weight)
    if not queue_weight >= 0:
        raise ValueError(f"queue_weight: must be >= 0, got {queue_weight}")
    peak = max(r.tokens_in_flight for r in ranks)
    costs: dict[int, float] = {}
    keys: list[tuple[float, float, int]] = []
    for r in ranks:
        work = _work(request, r.rank)
        after = r.tokens_in_flight + work
        cost = max(peak, after) - peak + affinity_weight * work + queue_weight * after
        costs[r.rank] = cost
        keys.append((cost, after, r.rank))
    best = min(keys)[2]
    lo, hi = min(costs.values()), max(costs.values())
    span = hi - lo
    scores = {k: 1.0 if span <= 0 else 1.0 - (v - lo) / span for k, v in costs.items()}
    return RankChoice(best, costs, scores)


def least_loaded_rank(ranks: Sequence[RankLoad]) -> int:
    """The baseline: fewest tokens in flight, ties to the lower rank id."""
    if not ranks:
        raise ValueError("ranks: at least one rank is required")
    return min((r.tokens_in_flight, r.rank) for r in ranks)[1]


def work_on(request: RankRequest, rank: int) -> float:
    """Tokens ``request`` adds to ``rank``: uncached prompt tokens plus decode tokens."""
    return _work(request, rank)


def _work(request: RankRequest, rank: int) -> float:
    cached = request.cached_tokens.get(rank, 0)
    return float(request.prompt_tokens - cached + request.decode_tokens)


def _validate(request: RankRequest, ranks: Sequence[RankLoad], affinity_weight: float) -> None:
    if not ranks:
        raise ValueError("ranks: at least one rank is required")
    ids = [r.rank for r in ranks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"ranks: duplicate rank ids in {sorted(ids)}")
    for r in ranks:
        if not r.tokens_in_flight >= 0:  # also rejects NaN
            raise ValueError(f"ranks[{r.rank}].tokens_in_flight: must be >= 0")
    if request.prompt_tokens < 0:
        raise ValueError("prompt_tokens: must be >= 0")
    if request.decode_tokens < 0:
        raise ValueError("decode_tokens: must be >= 0")
    for rank, cached in request.cached_tokens.items():
        if not 0 <= cached <= request.prompt_tokens:
            raise ValueError(
                f"cached_tokens[{rank}]: {cached} is outside [0, prompt_tokens="
                f"{request.prompt_tokens}]"
            )
    if not affinity_weight >= 0:
        raise ValueError(f"affinity_weight: must be >= 0, got {affinity_weight}")


class RankBalancer:
    """Tokens in flight per rank of one EP group, updated as requests come and go.

    For callers without their own load signal (the simulator, tests): ``assign`` picks a rank and
    charges it the request's work there; ``release`` takes work off when it is done.
    """

    def __init__(
        self, ranks: Sequence[int], *, affinity_weight: float = 1.0, queue_weight: float = 0.0
    ) -> None:
        if not ranks or len(set(ranks)) != len(ranks):
            raise ValueError("ranks: a non-empty list of distinct rank ids is required")
        if not affinity_weight >= 0:
            raise ValueError(f"affinity_weight: must be >= 0, got {affinity_weight}")
        if not queue_weight >= 0:
            raise ValueError(f"queue_weight: must be >= 0, got {queue_weight}")
        self.affinity_weight = affinity_weight
        self.queue_weight = queue_weight
        self._load = dict.fromkeys(ranks, 0.0)

    @property
    def ranks(self) -> list[int]:
        """The group's rank ids, in the order given."""
        return list(self._load)

    def load(self, rank: int) -> float:
        """Tokens in flight on ``rank``."""
        return self._load[rank]

    def loads(self) -> list[RankLoad]:
        """Every rank with its tokens in flight."""
        return [RankLoad(r, t) for r, t in self._load.items()]

    def assign(self, request: RankRequest) -> RankChoice:
        """Choose a rank for ``request`` and charge it the request's work there."""
        choice = choose_rank(
            request,
            self.loads(),
            affinity_weight=self.affinity_weight,
            queue_weight=self.queue_weight,
        )
        self._load[choice.rank] += _work(request, choice.rank)
        return choice

    def charge(self, rank: int, tokens: float) -> None:
        """Add ``tokens`` of work to ``rank`` (a caller that chose the rank itself)."""
        if rank not in self._load:
            raise ValueError(f"rank: {rank} is not in this group")
        if not tokens >= 0:
            raise ValueError(f"tokens: must be >= 0, got {tokens}")
        self._load[rank] += tokens

    def release(self, rank: int, tokens: float) -> None:
        """``tokens`` of ``rank``'s work are done (never below zero)."""
        if rank not in self._load:
            raise ValueError(f"rank: {rank} is not in this group")
        self._load[rank] = max(0.0, self._load[rank] - tokens)
