"""The expert-router's rank routing: the SDK algorithm re-exported, and its step model."""

import llmd_sdk.dp_rank as sdk
from llmd_expert_router import rank_routing
from llmd_expert_router.rank_sim import Group, Workload, simulate


def test_public_names_are_the_sdks() -> None:
    for name in rank_routing.__all__:
        assert getattr(rank_routing, name) is getattr(sdk, name), name
    assert rank_routing.DP_RANK_HEADER.lower() == "x-data-parallel-rank"


def test_in_the_step_model_balancing_keeps_prefix_hits_that_least_load_loses() -> None:
    """DP=8, shared prefixes, moderate load: fewer recomputed tokens and a faster first token."""
    w = Workload(num_requests=600, arrival_rate=80.0, prefix_zipf=1.5, seed=1)
    g = Group(ranks=8)
    ll = simulate("least_load", w, g)
    ours = simulate("balanced", w, g)
    assert ours.cache_hit_fraction > ll.cache_hit_fraction + 0.05
    assert ours.ttft_mean_s < ll.ttft_mean_s
    assert ours.makespan_s <= ll.makespan_s


def test_in_the_step_model_balancing_matches_least_load_without_prefixes() -> None:
    w = Workload(num_requests=600, arrival_rate=150.0, prefix_tokens=0, seed=2)
    g = Group(ranks=8)
    ll = simulate("least_load", w, g)
    ours = simulate("balanced", w, g)
    assert ours.makespan_s <= ll.makespan_s * 1.02
    assert ours.step_imbalance <= ll.step_imbalance * 1.05
