"""Speculative prefix entries: the index on its own, and the precise scorer using it."""

from __future__ import annotations

import pytest
from llmd_epp.pickerconfig import ConfigError, load_picker_config
from llmd_epp.scheduling import CycleState, Endpoint, ProfileResult, SchedulingResult
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import (
    PrecisePrefixCacheScorer,
    PrefixScores,
)
from llmd_epp.scheduling.speculative_index import SpeculativeIndex

from .helpers import ep, req


def test_match_counts_leading_blocks_until_the_ttl_runs_out() -> None:
    idx = SpeculativeIndex(ttl=2.0)
    idx.add([1, 2, 3], "a", now=0.0)
    idx.add([1, 2], "b", now=0.5)
    assert idx.match([1, 2, 3, 4], now=1.0) == {"a": 3, "b": 2}
    assert idx.match([9, 2, 3], now=1.0) == {}  # only leading blocks count
    assert idx.match([1, 2, 3], now=2.2) == {"b": 2}  # a's entries expired at 2.0
    assert idx.match([1, 2, 3], now=2.5) == {}
    assert len(idx) == 0  # expired entries are purged, not only hidden


def test_a_renewed_entry_outlives_the_first_one() -> None:
    idx = SpeculativeIndex(ttl=2.0)
    idx.add([1, 2], "a", now=0.0)
    idx.add([1], "a", now=1.5)  # a later request with a shorter shared prefix
    assert idx.match([1, 2], now=2.5) == {"a": 1}
    assert idx.match([1, 2], now=3.5) == {}


def test_removed_endpoint_is_forgotten() -> None:
    idx = SpeculativeIndex(ttl=5.0)
    idx.add([1, 2], "a", now=0.0)
    idx.add([1, 2], "b", now=0.0)
    idx.remove_endpoint("a")
    assert idx.match([1, 2], now=1.0) == {"b": 2}


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speculativeTTL"):
        SpeculativeIndex(ttl=0)


class ReportsNothing:
    """An index that has seen no KV event yet: the state right after a routing decision."""

    def score(self, request: object, endpoints: list[str]) -> PrefixScores:
        return PrefixScores(matched=dict.fromkeys(endpoints, 0), total_blocks=40)


def _decided(target: Endpoint) -> SchedulingResult:
    return SchedulingResult("default", {"default": ProfileResult([target])})


SHARED = "You are the benchmark's assistant. Answer briefly and cite sources. " * 6


@pytest.mark.parametrize("speculative", [True, False])
def test_the_next_request_sharing_a_prefix_follows_the_first_until_events_would_arrive(
    speculative: bool,
) -> None:
    eps = [ep(1), ep(2), ep(3)]
    s = PrecisePrefixCacheScorer(
        source=ReportsNothing(), speculative_ttl=2.0 if speculative else None
    )
    first = req(SHARED + "first question", rid="1")
    assert s.score(CycleState(now=0.0), first, eps) == [0.0, 0.0, 0.0]
    s.pre_request(first, _decided(eps[1]), 0.0)

    second = req(SHARED + "second question", rid="2")
    scores = s.score(CycleState(now=1.0), second, eps)
    if speculative:
        assert scores == [0.0, 1.0, 0.0]
    else:
        assert scores == [0.0, 0.0, 0.0]
    late = req(SHARED + "third question", rid="3")
    assert s.score(CycleState(now=2.5), late, eps) == [0.0, 0.0, 0.0]  # the guess expired


def test_reported_blocks_outweigh_a_shorter_guess() -> None:
    eps = [ep(1), ep(2)]

    class Reports:
        def score(self, request: object, endpoints: list[str]) -> PrefixScores:
            # Endpoint 1 holds 30 of the request's 40 blocks, by its KV events.
            return PrefixScores(
                matched={eps[0].key: 30}, weighted={eps[0].key: 30.0}, total_blocks=40
            )

    s = PrecisePrefixCacheScorer(source=Reports(), speculative_ttl=2.0)
    s.pre_request(req(SHARED[:100], rid="1"), _decided(eps[1]), 0.0)  # a short shared prefix
    scores = s.score(CycleState(now=0.5), req(SHARED + "q", rid="2"), eps)
    assert scores[0] == 1.0 and scores[1] == 0.0


PRECISE = """
plugins:
- type: precise-prefix-cache-scorer
  parameters: {params}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: max-score-picker
"""


@pytest.mark.parametrize(
    ("params", "ttl"),
    [
        ("{}", None),
        ("{speculativeIndexing: true}", 2.0),
        ("{speculativeIndexing: true, speculativeTTL: 500ms}", 0.5),
        ("{indexerConfig: {speculativeIndexing: true}}", 2.0),  # where upstream also reads it
        ("{speculativeIndexing: false, speculativeTTL: 5s}", None),
    ],
)
def test_config_parameters_as_upstream(params: str, ttl: float | None) -> None:
    cfg = load_picker_config(
        PRECISE.format(params=params), deps={"prefix_score_source": ReportsNothing()}
    )
    scorer = cfg.plugins["precise-prefix-cache-scorer"]
    assert isinstance(scorer, PrecisePrefixCacheScorer)
    assert (scorer.speculative.ttl if scorer.speculative is not None else None) == ttl


def test_a_non_positive_ttl_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="speculativeTTL"):
        load_picker_config(
            PRECISE.format(params="{speculativeIndexing: true, speculativeTTL: 0s}"),
            deps={"prefix_score_source": ReportsNothing()},
        )
