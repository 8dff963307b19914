"""`dp-rank-balancer`: picks the data-parallel rank of a wide-EP group and pins the request to
it with vLLM's `x-data-parallel-rank` header.

A wide-EP pool is served as vLLM serves it with internal DP load balancing off: one API server
per EP group (one pool endpoint) in front of `dataParallelSize` engine cores, the rank of each
request chosen by the `x-data-parallel-rank` request header. The ranks' MoE layers are
collectives, so they step together and the busiest rank sets the pace of the whole group; the
plugin therefore balances *tokens in flight* per rank while keeping prefix affinity, with the
SDK's cost model (`llmd_sdk.dp_rank.choose_rank`): a request costs its uncached prompt tokens
plus `expectedDecodeTokens` on a rank, and goes where it raises the group's bottleneck plus
`affinityWeight` times the added work plus `queueWeight` times the tokens it would wait behind
the least (the queue term lets a deep prefix rank spill; without it hot prefixes pile up).

State lives in the plugin and moves only through the lifecycle hooks: `pre_request` charges the
chosen rank and sets the header, `response_complete` releases the charge (an entry older than
`requestTimeout` is dropped so a lost completion cannot pin a rank), `endpoint_removed` forgets
a group. Per-rank prefix hits come from a synchronous `RankPrefixSource` when the service (or a
simulator) provides one as the `dp_rank_prefix_source` dependency, else from the plugin's own
approximate index of what it routed to each rank (as `prefix-cache-scorer` does per endpoint),
corrected by kvmanager where `prefixPluginName` names a `precise-prefix-cache-scorer`: its
answer carries the rank holding the longest match, which then counts with its real match.

As a scorer it also ranks several groups against each other: a group scores by its peak rank
load after placing the request on its best rank, plus the weighted work (min-max over the
candidates, lower is better; a single group scores 1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmd_sdk.dp_rank import RankChoice, RankLoad, RankRequest, choose_rank, work_on
from pydantic import Field

from llmd_epp.scheduling.framework import (
    CycleState,
    EndpointListener,
    Handle,
    PreRequest,
    ResponseComplete,
    Scorer,
)
from llmd_epp.scheduling.prefix_index import (
    AVERAGE_CHARS_PER_TOKEN,
    ApproxPrefixIndex,
    request_hashes,
)
from llmd_epp.scheduling.registry import Duration, PluginParams, register
from llmd_epp.scheduling.types import DP_RANK_HEADER, Endpoint, LLMRequest, SchedulingResult

DEFAULT_REQUEST_TIMEOUT = 120.0
# Weight of the tokens a request waits behind on a rank (see llmd_sdk.dp_rank): 0.5 did best
# of 0 / 0.5 / 1 / 2 in vllm-sim's DP=8 lockstep simulation (benchmarks/rank_routing_des.py).
DEFAULT_QUEUE_WEIGHT = 0.5
DEFAULT_BLOCK_SIZE_TOKENS = 16
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_RANK = 31250


class RankPrefixSource(Protocol):
    """Per-rank prefix hits of a request on one group: rank -> prompt tokens cached there."""

    def cached_tokens(
        self, request: LLMRequest, endpoint: Endpoint, ranks: Sequence[int]
    ) -> Mapping[int, int]: ...


@dataclass(slots=True)
class _Plan:
    """What scoring worked out for one request on one group (kept for `pre_request`)."""

    request: RankRequest
    choice: RankChoice


@dataclass(slots=True)
class _Charge:
    started: float
    key: str
    rank: int
    tokens: float


@register()
class DpRankBalancer(Scorer, PreRequest, ResponseComplete, EndpointListener):
    TYPE = "dp-rank-balancer"

    class Params(PluginParams):
        dataParallelSize: int = Field(ge=1, le=4096)
        affinityWeight: float = Field(default=1.0, ge=0)
        queueWeight: float = Field(default=DEFAULT_QUEUE_WEIGHT, ge=0)
        expectedDecodeTokens: int = Field(default=128, ge=0)
        blockSizeTokens: int = Field(default=DEFAULT_BLOCK_SIZE_TOKENS, ge=1)
        maxPrefixBlocksToMatch: int = Field(default=DEFAULT_MAX_PREFIX_BLOCKS, ge=1)
        lruCapacityPerRank: int = Field(default=DEFAULT_LRU_CAPACITY_PER_RANK, ge=1)
        requestTimeout: Duration = DEFAULT_REQUEST_TIMEOUT
        prefixPluginName: str = ""

    def __init__(
        self,
        name: str = "",
        data_parallel_size: int = 1,
        *,
        affinity_weight: float = 1.0,
        queue_weight: float = DEFAULT_QUEUE_WEIGHT,
        expected_decode_tokens: int = 128,
        block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS,
        max_prefix_blocks: int = DEFAULT_MAX_PREFIX_BLOCKS,
        lru_capacity: int = DEFAULT_LRU_CAPACITY_PER_RANK,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        prefix_source: RankPrefixSource | None = None,
        prefix_plugin: str = "",
        handle: Handle | None = None,
    ) -> None:
        super().__init__(name)
        if data_parallel_size < 1:
            raise ValueError(f"parameters.dataParallelSize: must be >= 1, got {data_parallel_size}")
        self.ranks = list(range(data_parallel_size))
        self.affinity_weight = affinity_weight
        self.queue_weight = queue_weight
        self.expected_decode_tokens = expected_decode_tokens
        self.block_tokens = block_size_tokens
        self.max_blocks = max_prefix_blocks
        self.request_timeout = request_timeout if request_timeout > 0 else DEFAULT_REQUEST_TIMEOUT
        self.prefix_source = prefix_source
        self.prefix_plugin = prefix_plugin
        self.handle = handle
        self.index = ApproxPrefixIndex(lru_capacity)
        # endpoint key -> tokens in flight per rank
        self.loads: dict[str, list[float]] = {}
        # request id -> its charge, oldest first
        self._open: OrderedDict[str, _Charge] = OrderedDict()

    @classmethod
    def create(cls, name: str, params: DpRankBalancer.Params, handle: Handle) -> DpRankBalancer:
        return cls(
            name,
            params.dataParallelSize,
            affinity_weight=params.affinityWeight,
            queue_weight=params.queueWeight,
            expected_decode_tokens=params.expectedDecodeTokens,
            block_size_tokens=params.blockSizeTokens,
            max_prefix_blocks=params.maxPrefixBlocksToMatch,
            lru_capacity=params.lruCapacityPerRank,
            request_timeout=params.requestTimeout,
            prefix_source=handle.deps.get("dp_rank_prefix_source"),
            prefix_plugin=params.prefixPluginName,
            handle=handle,
        )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _rank_key(key: str, rank: int) -> str:
        return f"{key}#{rank}"

    def _hashes(self, request: LLMRequest) -> list[int]:
        return request_hashes(
            request,
            self.name + "#hashes",
            self.block_tokens * AVERAGE_CHARS_PER_TOKEN,
            self.max_blocks,
        )

    @staticmethod
    def prompt_tokens(request: LLMRequest) -> int:
        """Token ids when the request carries them, else characters / 4."""
        if request.token_ids is not None:
            return len(request.token_ids)
        return request.input_chars // AVERAGE_CHARS_PER_TOKEN

    def _cached(self, request: LLMRequest, endpoint: Endpoint, prompt: int) -> dict[int, int]:
        if self.prefix_source is not None:
            raw = self.prefix_source.cached_tokens(request, endpoint, self.ranks)
        else:
            hashes = self._hashes(request)
            matches = self.index.match(hashes) if hashes else {}
            raw = {
                r: matches.get(self._rank_key(endpoint.key, r), 0) * self.block_tokens
                for r in self.ranks
            }
            raw.update(self._indexed(request, endpoint))
        # A block count can overshoot a token count estimated from characters: clamp.
        n_ranks = len(self.ranks)
        return {r: min(prompt, int(n)) for r, n in raw.items() if n > 0 and 0 <= r < n_ranks}

    def _indexed(self, request: LLMRequest, endpoint: Endpoint) -> dict[int, int]:
        """Per-rank hits the `prefixPluginName` plugin (the precise scorer, from kvmanager) has
        for `endpoint`: kvmanager names the rank holding the longest match."""
        if not self.prefix_plugin or self.handle is None:
            return {}
        producer = self.handle.plugin(self.prefix_plugin)
        rank_matches = getattr(producer, "rank_matches", None)
        if rank_matches is None:
            return {}
        by_endpoint, block_size = rank_matches(request, [endpoint])
        return {r: n * block_size for r, n in by_endpoint.get(endpoint.key, {}).items()}

    def _load_of(self, key: str) -> list[float]:
        load = self.loads.get(key)
        if load is None:
            load = self.loads[key] = [0.0] * len(self.ranks)
        return load

    def plan(self, request: LLMRequest, endpoint: Endpoint) -> _Plan:
        """The rank choice for `request` on `endpoint`'s group (cached per request)."""
        plans: dict[str, _Plan] = request.state.setdefault(self.name, {})
        found = plans.get(endpoint.key)
        if found is not None:
            return found
        prompt = self.prompt_tokens(request)
        cached = self._cached(request, endpoint, prompt)
        rank_request = RankRequest(prompt, cached, self.expected_decode_tokens)
        load = self._load_of(endpoint.key)
        loads = [RankLoad(r, load[r]) for r in self.ranks]
        choice = choose_rank(
            rank_request,
            loads,
            affinity_weight=self.affinity_weight,
            queue_weight=self.queue_weight,
        )
        plans[endpoint.key] = plan = _Plan(rank_request, choice)
        return plan

    def _group_cost(self, plan: _Plan, key: str) -> float:
        load = self._load_of(key)
        return plan.choice.costs[plan.choice.rank] + max(load)

    def _expire(self, now: float) -> None:
        limit = now - self.request_timeout
        while self._open:
            rid, charge = next(iter(self._open.items()))
            if charge.started > limit:
                break
            del self._open[rid]
            self._release(charge)

    def _release(self, charge: _Charge) -> None:
        load = self.loads.get(charge.key)
        if load is not None:
            load[charge.rank] = max(0.0, load[charge.rank] - charge.tokens)

    # ------------------------------------------------------------------ plugin kinds
    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        self._expire(cycle.now)
        # Across groups the absolute figure counts: the group's peak after placing the request
        # (what its next steps will cost) plus the weighted work, for the group's best rank.
        best = [self._group_cost(self.plan(request, e), e.key) for e in endpoints]
        if not best:
            return []
        lo, hi = min(best), max(best)
        if hi <= lo:
            return [1.0] * len(best)
        return [1.0 - (c - lo) / (hi - lo) for c in best]

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        self._expire(now)
        target = result.primary
        plan = self.plan(request, target)
        rank = plan.choice.rank
        result.headers[DP_RANK_HEADER] = str(rank)
        previous = self._open.pop(request.request_id, None)
        if previous is not None:  # rescheduled (retry): the old charge no longer holds
            self._release(previous)
        tokens = work_on(plan.request, rank)
        self._load_of(target.key)[rank] += tokens
        self._open[request.request_id] = _Charge(now, target.key, rank, tokens)
        if self.prefix_source is None:
            hashes = self._hashes(request)
            if hashes:
                self.index.add(hashes, self._rank_key(target.key, rank))

    def response_complete(
        self,
        request: LLMRequest,
        served: str | None,
        now: float,
        usage: Mapping[str, Any] | None,
    ) -> None:
        charge = self._open.pop(request.request_id, None)
        if charge is not None:
            self._release(charge)

    def endpoint_removed(self, key: str) -> None:
        self.loads.pop(key, None)
        for r in self.ranks:
            self.index.remove_endpoint(self._rank_key(key, r))
        for rid in [rid for rid, c in self._open.items() if c.key == key]:
            del self._open[rid]

    def tokens_in_flight(self, key: str) -> list[float]:
        """Per-rank tokens in flight on the group at `key` (zeros when unknown)."""
        return list(self.loads.get(key, [0.0] * len(self.ranks)))
