"""The DP-rank balancing algorithm (``llmd_sdk.dp_rank``): pure, no I/O."""

import math

import pytest
from llmd_sdk.dp_rank import (
    DP_RANK_HEADER,
    RankBalancer,
    RankLoad,
    RankRequest,
    choose_rank,
    least_loaded_rank,
    work_on,
)


def loads(*tokens: float) -> list[RankLoad]:
    return [RankLoad(i, t) for i, t in enumerate(tokens)]


def test_header_is_vllms() -> None:
    assert DP_RANK_HEADER.lower() == "x-data-parallel-rank"


def test_equal_loads_go_to_the_rank_holding_the_prefix() -> None:
    choice = choose_rank(RankRequest(1000, {2: 800}), loads(100, 100, 100, 100))
    assert choice.rank == 2
    assert choice.scores[2] == 1.0 and min(choice.scores.values()) == 0.0


def test_prefix_rank_kept_while_staying_costs_less_than_recomputing() -> None:
    # Rank 0 is the bottleneck and holds 800 of 1000 prompt tokens: staying raises the peak by
    # 200 (+200 work) = 400; moving costs 1000 of work without raising the peak.
    choice = choose_rank(RankRequest(1000, {0: 800}), loads(10_000, 0, 0, 0))
    assert choice.rank == 0 and choice.costs[0] == 400 and choice.costs[1] == 1000


def test_request_leaves_the_prefix_rank_when_the_bottleneck_would_grow_more() -> None:
    # Staying: peak +3000, work 3000 -> 6000. Moving: work 4000, peak unchanged -> 4000.
    choice = choose_rank(RankRequest(4000, {0: 1000}), loads(10_000, 0, 50, 0))
    assert choice.rank == 1
    assert choice.costs == {0: 6000.0, 1: 4000.0, 2: 4000.0, 3: 4000.0}


def test_without_affinity_weight_the_lightest_result_wins_ties() -> None:
    # Ranks 0-2 keep the peak (cost 0); the lower load after placement decides among them.
    choice = choose_rank(RankRequest(100, {1: 100}), loads(0, 50, 10, 500), affinity_weight=0)
    assert choice.rank == 1  # 50 + 0 < 0 + 100 < 10 + 100
    assert choice.costs == {0: 0.0, 1: 0.0, 2: 0.0, 3: 100.0}
    assert choice.scores == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}


def test_bottleneck_term_spreads_requests_without_prefixes() -> None:
    balancer = RankBalancer([0, 1, 2, 3])
    picked = [balancer.assign(RankRequest(100, {})).rank for _ in range(8)]
    assert sorted(picked) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r.tokens_in_flight for r in balancer.loads()] == [200.0] * 4
    balancer.release(2, 150)
    assert balancer.assign(RankRequest(100, {})).rank == 2
    balancer.release(2, 10_000)
    assert balancer.loads()[2].tokens_in_flight == 0.0


def test_a_single_rank_scores_one() -> None:
    assert choose_rank(RankRequest(10, {}), loads(7)).scores == {0: 1.0}


def test_least_loaded_baseline_breaks_ties_by_rank_id() -> None:
    assert least_loaded_rank(loads(5, 3, 3)) == 1


@pytest.mark.parametrize(
    ("request_", "ranks", "weight", "message"),
    [
        (RankRequest(10, {}), [], 1.0, "ranks: at least one"),
        (RankRequest(10, {}), [RankLoad(1, 0), RankLoad(1, 2)], 1.0, "ranks: duplicate"),
        (RankRequest(10, {}), [RankLoad(0, -1)], 1.0, r"ranks\[0\].tokens_in_flight"),
        (RankRequest(10, {}), [RankLoad(0, math.nan)], 1.0, r"ranks\[0\].tokens_in_flight"),
        (RankRequest(-1, {}), [RankLoad(0, 0)], 1.0, "prompt_tokens"),
        (RankRequest(10, {}, decode_tokens=-2), [RankLoad(0, 0)], 1.0, "decode_tokens"),
        (RankRequest(10, {0: 11}), [RankLoad(0, 0)], 1.0, r"cached_tokens\[0\]: 11"),
        (RankRequest(10, {}), [RankLoad(0, 0)], -0.5, "affinity_weight"),
    ],
)
def test_bad_inputs_name_the_field(
    request_: RankRequest, ranks: list[RankLoad], weight: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        choose_rank(request_, ranks, affinity_weight=weight)


def test_balancer_validates_its_ranks() -> None:
    with pytest.raises(ValueError, match="ranks:"):
        RankBalancer([1, 1])
    with pytest.raises(ValueError, match="rank: 9"):
        RankBalancer([0]).release(9, 1)


def test_work_counts_uncached_prompt_and_decode_tokens() -> None:
    request = RankRequest(1000, {3: 640}, decode_tokens=50)
    assert work_on(request, 3) == 410.0
    assert work_on(request, 0) == 1050.0


def test_balancer_exposes_ranks_and_per_rank_load() -> None:
    balancer = RankBalancer([4, 5, 6])
    assert balancer.ranks == [4, 5, 6]
    choice = balancer.assign(RankRequest(300, {6: 100}, decode_tokens=20))
    assert choice.rank == 6  # equal loads: the cached prefix makes rank 6 the cheapest
    assert balancer.load(6) == 220.0 and balancer.load(4) == 0.0


def test_charge_adds_work_to_a_chosen_rank_and_validates() -> None:
    balancer = RankBalancer([0, 1])
    balancer.charge(1, 250)
    assert balancer.load(1) == 250.0
    assert balancer.assign(RankRequest(100, {})).rank == 0
    with pytest.raises(ValueError, match="rank: 5"):
        balancer.charge(5, 1)
    with pytest.raises(ValueError, match="tokens: must be >= 0"):
        balancer.charge(0, -1)


def test_queue_weight_spills_a_deep_prefix_rank_that_the_bottleneck_term_keeps() -> None:
    # Rank 0 holds 900 of 1000 prompt tokens but 20k tokens are queued there.
    request = RankRequest(1000, {0: 900})
    deep = loads(20_000, 0, 0, 0)
    assert choose_rank(request, deep).rank == 0  # stays: +100 peak +100 work < 1000 work
    spilled = choose_rank(request, deep, queue_weight=0.5)
    assert spilled.rank == 1
    assert spilled.costs[0] == 100 + 100 + 0.5 * 20_100 and spilled.costs[1] == 1000 + 500
    # A shallow queue keeps the prefix rank even with the queue term.
    assert choose_rank(request, loads(500, 0, 0, 0), queue_weight=0.5).rank == 0
    with pytest.raises(ValueError, match="queue_weight"):
        choose_rank(request, deep, queue_weight=-1)
    with pytest.raises(ValueError, match="queue_weight"):
        RankBalancer([0], queue_weight=-0.1)
    assert RankBalancer([0, 1], queue_weight=0.5).queue_weight == 0.5
