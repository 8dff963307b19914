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


def _reference(
    sets: list[frozenset[Holder]], candidates: list[str], scorer: PrefixScorer
) -> list[tuple[int, float, int]]:
    """Block by block, pair by pair: the definition, slowly."""
    w = scorer.weights
    out = []
    for ep in candidates:
        best: tuple[int, float, int] = (0, 0.0, -1)
        ranks = {h.rank for s in sets for h in s if h.endpoint == ep}
        for r in sorted(ranks):
            n, sc = 0, 0.0
            for s in sets:
                mediums = [h.medium for h in s if (h.endpoint, h.rank) == (ep, r)]
                if not mediums:
                    break
                n += 1
                sc += max(w.get(m, scorer.default_weight) for m in mediums)
            if (n, sc) > best[:2]:
                best = (n, sc, r)
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_matches_the_definition_on_random_prefixes(seed: int) -> None:
    import random

    rng = random.Random(seed)
    eps = [f"e{i}:1" for i in range(6)]
    universe = [Holder(e, m, r) for e in eps for m in ("GPU", "CPU", "STORAGE") for r in (-1, 0)]
    cur = frozenset(rng.sample(universe, 10))
    sets = []
    for _ in range(rng.randrange(1, 60)):
        if rng.random() < 0.3:  # change a few holders, as evictions and offloads do
            drop = set(rng.sample(sorted(cur), k=min(len(cur), rng.randrange(0, 3))))
            add = set(rng.sample(universe, k=rng.randrange(0, 2)))
            cur = frozenset((cur - drop) | add) or frozenset([universe[0]])
        sets.append(cur if rng.random() < 0.5 else frozenset(cur))  # identical or equal
    scorer = PrefixScorer({"CPU": 0.6, "STORAGE": 0.3})
    candidates = rng.sample(eps, 4)
    got = [
        (s.matched_blocks, round(s.score, 9), s.data_parallel_rank)
        for s in scorer.score(sets, candidates)
    ]
    want = [(n, round(sc, 9), r) for n, sc, r in _reference(sets, candidates, scorer)]
    assert got == want
