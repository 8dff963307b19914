"""Filters and pickers."""

from __future__ import annotations

import random
from collections import Counter

from llmd_epp.scheduling import CycleState
from llmd_epp.scheduling.plugins.by_label import ByLabel, DecodeFilter, PrefillFilter
from llmd_epp.scheduling.plugins.max_score_picker import MaxScorePicker
from llmd_epp.scheduling.plugins.random_picker import RandomPicker
from llmd_epp.scheduling.plugins.weighted_random_picker import WeightedRandomPicker

from .helpers import ep, req

CYCLE = CycleState(now=0.0)
ROLE = "llm-d.ai/role"


def test_by_label_valid_values_and_missing_label() -> None:
    eps = [ep(1, labels={"tier": "gold"}), ep(2, labels={"tier": "tin"}), ep(3)]
    strict = ByLabel("f", "tier", ["gold", "silver"])
    assert [e.key for e in strict.filter(CYCLE, req(), eps)] == [eps[0].key]
    lenient = ByLabel("f", "tier", ["gold"], allows_no_label=True)
    assert [e.key for e in lenient.filter(CYCLE, req(), eps)] == [eps[0].key, eps[2].key]


def test_role_filters_follow_llm_d_roles() -> None:
    eps = [
        ep(1, labels={ROLE: "prefill"}),
        ep(2, labels={ROLE: "decode"}),
        ep(3, labels={ROLE: "both"}),
        ep(4, labels={ROLE: "prefill-decode"}),
        ep(5),
    ]
    decode = [e.key for e in DecodeFilter().filter(CYCLE, req(), eps)]
    prefill = [e.key for e in PrefillFilter().filter(CYCLE, req(), eps)]
    assert decode == [eps[1].key, eps[2].key, eps[3].key, eps[4].key]
    assert prefill == [eps[0].key, eps[2].key, eps[3].key]


def test_max_score_picker_best_first_with_fallbacks() -> None:
    eps = [ep(i) for i in range(5)]
    scored = list(zip(eps, [0.1, 0.9, 0.5, 0.7, 0.2], strict=True))
    one = MaxScorePicker(rng=random.Random(1)).pick(CYCLE, req(), scored)
    assert [e.key for e in one] == [eps[1].key]
    three = MaxScorePicker(max_endpoints=3, rng=random.Random(1)).pick(CYCLE, req(), scored)
    assert [e.key for e in three] == [eps[1].key, eps[3].key, eps[2].key]


def test_max_score_picker_breaks_ties_at_random() -> None:
    eps = [ep(i) for i in range(4)]
    scored = [(e, 1.0) for e in eps]
    picker = MaxScorePicker(rng=random.Random(7))
    seen = Counter(picker.pick(CYCLE, req(), scored)[0].key for _ in range(400))
    assert set(seen) == {e.key for e in eps}
    assert min(seen.values()) > 50


def test_random_picker_returns_distinct_endpoints() -> None:
    eps = [ep(i) for i in range(6)]
    picked = RandomPicker(max_endpoints=4, rng=random.Random(3)).pick(
        CYCLE, req(), [(e, 0.0) for e in eps]
    )
    assert len({e.key for e in picked}) == 4


def test_weighted_random_picker_is_proportional_to_score() -> None:
    eps = [ep(1), ep(2), ep(3)]
    scored = list(zip(eps, [1.0, 3.0, 0.0], strict=True))
    picker = WeightedRandomPicker(rng=random.Random(11))
    counts = Counter(picker.pick(CYCLE, req(), scored)[0].key for _ in range(4000))
    assert counts[eps[2].key] == 0
    ratio = counts[eps[1].key] / counts[eps[0].key]
    assert 2.4 < ratio < 3.8  # 3:1 expected
    both = WeightedRandomPicker(max_endpoints=3, rng=random.Random(2)).pick(CYCLE, req(), scored)
    assert both[-1].key == eps[2].key  # zero score sorts last
    zeros = WeightedRandomPicker(rng=random.Random(2)).pick(CYCLE, req(), [(e, 0.0) for e in eps])
    assert len(zeros) == 1
