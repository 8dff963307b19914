"""A DP group of engine cores in lockstep (`llmd_sim.dp_group`) and its reference rank routers."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from llmd_sim.cluster import ClusterSimulator, EngineView
from llmd_sim.dp_group import (
    BalancedRankRouter,
    DPGroupSimulator,
    LeastRequestsRankRouter,
    LeastTokensRankRouter,
    PrefixFirstRankRouter,
)
from llmd_sim.engine import EngineConfig, Request
from llmd_sim.latency import LatencyModel, load_profile
from llmd_sim.trace import SyntheticWorkload, TraceRequest

PROFILE = load_profile()


class Fixed:
    """Routes by a table (request id -> rank) and records completions."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table
        self.done: list[tuple[str, int, float]] = []

    def route(self, request: TraceRequest, ranks: Sequence[EngineView]) -> int:
        return self.table[request.request_id]

    def finished(self, request_id: str, rank: int, now: float) -> None:
        self.done.append((request_id, rank, now))


def group(router: object, ranks: int = 2, blocks: int = 4000) -> DPGroupSimulator:
    return DPGroupSimulator(
        ranks,
        EngineConfig(num_gpu_blocks=blocks),
        LatencyModel(PROFILE),
        router,  # type: ignore[arg-type]
    )


def test_a_group_step_lasts_as_long_as_its_slowest_rank() -> None:
    sim = group(Fixed({}), ranks=3)
    long = Request("long", list(range(4000)), [1], arrival_time=0.0)
    short = Request("short", list(range(16)), [1], arrival_time=0.0)
    sim.engines[0].add_request(long)
    sim.engines[1].add_request(short)
    step = sim.group_step(0.0)
    d = step.rank_durations
    assert d[0] > d[1] > 0 and d[2] == 0.0  # rank 2 had nothing to do
    assert step.duration == max(d) == d[0]
    # Both first tokens (and finishes: one output token) leave at the group step's end.
    assert short.first_token_time == long.first_token_time == step.end == d[0]
    assert short.finish_time == step.end
    assert sim.lockstep_overhead == pytest.approx(d[0] / (sum(d) / 3))


def test_lockstep_makes_a_light_rank_wait_for_the_busy_one() -> None:
    trace = [
        TraceRequest("big", 0.0, list(range(6000)), 4),
        TraceRequest("small", 0.0, list(range(7000, 7032)), 4),
    ]
    table = {"big": 0, "small": 1}
    router = Fixed(table)
    locked = group(router).run(iter(trace))
    free = ClusterSimulator(
        2, EngineConfig(num_gpu_blocks=4000), LatencyModel(PROFILE), router
    ).run(TraceRequest(t.request_id, t.arrival, t.prompt_token_ids, 4) for t in trace)
    ttft = {r.request_id: r.ttft for r in locked.records}
    alone = {r.request_id: r.ttft for r in free.records}
    assert ttft["big"] == pytest.approx(alone["big"])
    assert ttft["small"] == pytest.approx(ttft["big"]) and alone["small"] < ttft["small"] / 5
    # The router heard of both completions, on their ranks, at the group's clock.
    assert sorted((rid, rank) for rid, rank, _ in router.done) == [("big", 0), ("small", 1)]
    finish = {r.request_id: r.finish for r in locked.records}
    assert all(now == finish[rid] for rid, _, now in router.done)


WORK = SyntheticWorkload(
    num_requests=240, rate_per_s=40, num_prefixes=6, prefix_len=1024, output_len=(8, 32), seed=5
)


def test_every_request_completes_and_token_routers_release_their_charges() -> None:
    for router in (LeastTokensRankRouter(4), PrefixFirstRankRouter(4), BalancedRankRouter(4)):
        res = group(router, ranks=4).run(iter(WORK))
        assert len(res.records) == 240 and sum(res.per_engine_requests) == 240
        assert all(0 < r.ttft <= r.e2e for r in res.records)
        assert [load.tokens_in_flight for load in router.balancer.loads()] == [0.0] * 4


def test_the_balancer_keeps_prefix_hits_that_least_load_loses() -> None:
    # 300 blocks per rank hold ~4 of the 6 shared 1024-token prefixes: spreading evicts.
    ll = group(LeastTokensRankRouter(4), ranks=4, blocks=300).run(iter(WORK)).summary()
    vllm = group(LeastRequestsRankRouter(), ranks=4, blocks=300).run(iter(WORK)).summary()
    ours = group(BalancedRankRouter(4), ranks=4, blocks=300).run(iter(WORK)).summary()
    assert ours["prefix_hit_rate"] > max(ll["prefix_hit_rate"], vllm["prefix_hit_rate"]) + 0.1
    assert ours["ttft_p90_s"] < ll["ttft_p90_s"]
    first = group(PrefixFirstRankRouter(4), ranks=4, blocks=300).run(iter(WORK)).summary()
    assert first["prefix_hit_rate"] > ll["prefix_hit_rate"] + 0.1


def test_a_router_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="router returned rank 5"):
        group(Fixed({"a": 5})).run(iter([TraceRequest("a", 0.0, [1, 2, 3], 2)]))
    with pytest.raises(ValueError, match="num_ranks"):
        group(Fixed({}), ranks=0)
