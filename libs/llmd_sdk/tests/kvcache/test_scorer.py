"""Longest-prefix scoring with tiers and data-parallel ranks (pure)."""

from __future__ import annotations

import pytest
from llmd_sdk.kvcache.index import Holder
from llmd_sdk.kvcache.scorer import PrefixScorer, holder_endpoints

A, B, C = "a:1", "b:1", "c:1"


def hs(*holders: Holder) -> frozenset[Holder]:
    return frozenset(holders)


def test_counts_consecutive_leading_blocks_per_endpoint() -> None:
    sets = [
        hs(Holder(A), Holder(B)),
        hs(Holder(A), Holder(B)),
        hs(Holder(A)),
        hs(Holder(A), Holder(B)),  # B is back, but its prefix broke at block 2
    ]
    got = PrefixScorer().score(sets, [B, A, C])
    assert [(s.endpoint, s.matched_blocks, s.score) for s in got] == [
        (B, 2, 2.0),
        (A, 4, 4.0),
        (C, 0, 0.0),
    ]
    assert got[1].blocks_by_medium == {"GPU": 4}


def test_tier_weights_and_best_medium_per_block() -> None:
    sets = [
        hs(Holder(A, "GPU"), Holder(A, "CPU")),
        hs(Holder(A, "CPU")),
        hs(Holder(A, "STORAGE")),
    ]
    got = PrefixScorer({"CPU": 0.5, "STORAGE": 0.25}).score(sets, [A])[0]
    assert got.matched_blocks == 3
    assert got.score == pytest.approx(1.0 + 0.5 + 0.25)
    assert got.blocks_by_medium == {"GPU": 1, "CPU": 1, "STORAGE": 1}


def test_a_prefix_must_sit_on_one_data_parallel_rank() -> None:
    sets = [
        hs(Holder(A, "GPU", 0), Holder(A, "GPU", 1)),
        hs(Holder(A, "GPU", 1)),
        hs(Holder(A, "GPU", 0), Holder(A, "GPU", 1)),
        hs(Holder(A, "GPU", 0)),
    ]
    got = PrefixScorer().score(sets, [A])[0]
    assert (got.matched_blocks, got.data_parallel_rank) == (3, 1)


def test_non_candidates_are_ignored_and_stop_the_walk() -> None:
    sets = [hs(Holder(A)), hs(Holder(B))]
    got = PrefixScorer().score(sets, [B])
    assert got[0].matched_blocks == 0
    assert got[0].data_parallel_rank == -1


def test_long_runs_of_the_same_set_are_counted() -> None:
    shared = hs(*(Holder(f"e{i}:1") for i in range(64)))
    tail = hs(Holder("e0:1"))
    sets = [shared] * 500 + [tail] * 12
    got = PrefixScorer().score(sets, [f"e{i}:1" for i in range(64)])
    assert got[0].matched_blocks == 512
    assert {s.matched_blocks for s in got[1:]} == {500}


def test_equal_but_not_identical_sets_form_one_run() -> None:
    sets = [hs(Holder(A)), hs(Holder(A)), hs(Holder(A), Holder(B)), hs(Holder(A), Holder(B))]
    got = PrefixScorer().score(sets, [A, B])
    assert [s.matched_blocks for s in got] == [4, 0]


def test_nothing_held() -> None:
    assert PrefixScorer().score([], [A])[0].matched_blocks == 0


def test_weights_are_validated() -> None:
    with pytest.raises(ValueError, match=r"tier_weights\.CPU"):
        PrefixScorer({"CPU": 1.5})


def test_holder_endpoints() -> None:
    assert holder_endpoints([hs(Holder(B)), hs(Holder(A), Holder(B))]) == [A, B]
