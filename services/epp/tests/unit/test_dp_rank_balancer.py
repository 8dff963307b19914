"""`dp-rank-balancer`: rank choice for wide-EP groups, its header, its lifecycle and its config."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import pytest
from llmd_epp.pickerconfig import load_picker_config
from llmd_epp.scheduling import (
    DP_RANK_HEADER,
    ConfigError,
    CycleState,
    Endpoint,
    LLMRequest,
    Scheduler,
)
from llmd_epp.scheduling.plugins.dp_rank_balancer import DpRankBalancer
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrefixScores
from llmd_sdk.dp_rank import DP_RANK_HEADER as SDK_HEADER

from .helpers import ep, req

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
CONFIG = (
    HEAD
    + """
plugins:
- type: dp-rank-balancer
  parameters:
    dataParallelSize: 4
    expectedDecodeTokens: 0
    blockSizeTokens: 4
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: dp-rank-balancer, weight: 1}
  - {pluginRef: max-score-picker}
"""
)


def scheduler(config: str = CONFIG, **deps: object) -> tuple[Scheduler, DpRankBalancer]:
    cfg = load_picker_config(config, seed=1, deps=deps)
    plugin = cfg.plugins["dp-rank-balancer"]
    assert isinstance(plugin, DpRankBalancer)
    return cfg.scheduler, plugin


def send(s: Scheduler, request: LLMRequest, endpoints: list[Endpoint], now: float = 0.0) -> int:
    result = s.schedule(request, endpoints, now)
    s.pre_request(request, result, now)
    return int(result.headers[DP_RANK_HEADER])


def words(tag: str, n: int) -> str:
    """`n` 4-character tokens (4 characters count as one token) that differ between tags."""
    base = zlib.crc32(tag.encode())
    out = []
    for i in range(n):
        v = (base + i * 7919) % 36**4
        out.append(
            "".join("0123456789abcdefghijklmnopqrstuvwxyz"[(v // 36**k) % 36] for k in range(4))
        )
    return "".join(out)


def test_header_is_vllms_in_lower_case() -> None:
    assert DP_RANK_HEADER == SDK_HEADER.lower() == "x-data-parallel-rank"


def test_config_loads_and_a_scheduling_call_sets_the_rank_header() -> None:
    s, plugin = scheduler()
    assert plugin.ranks == [0, 1, 2, 3] and plugin.block_tokens == 4
    assert plugin.affinity_weight == 1.0 and plugin.queue_weight == 0.5
    result = s.schedule(req("x" * 400, rid="a"), [ep(1)], 0.0)
    assert DP_RANK_HEADER not in result.headers  # set once the decision is final
    s.pre_request(req("x" * 400, rid="a"), result, 0.0)
    assert result.headers[DP_RANK_HEADER] == "0"
    assert plugin.tokens_in_flight(ep(1).key)[0] == 100.0  # 400 characters / 4


def test_requests_without_shared_prefixes_spread_evenly_over_ranks() -> None:
    s, plugin = scheduler()
    group = [ep(1)]
    ranks = [send(s, req(words(f"u{i}", 40), rid=f"r{i}"), group) for i in range(8)]
    assert sorted(ranks) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert plugin.tokens_in_flight(group[0].key) == [80.0] * 4


def test_a_shared_prefix_follows_its_rank_while_the_group_is_balanced() -> None:
    s, plugin = scheduler()
    group = [ep(1)]
    system = words("sys", 200)  # 200 tokens shared
    first = send(s, req(system + words("q0", 8), rid="a"), group)
    # Load the other ranks so they are not idle either: balance is not at stake.
    for i in range(3):
        send(s, req(words(f"o{i}", 220), rid=f"o{i}"), group)
    again = send(s, req(system + words("q1", 8), rid="b"), group)
    assert again == first
    # Only the 8 new tokens were charged on the prefix rank (the 200 are cached there).
    assert plugin.tokens_in_flight(group[0].key)[first] == 208.0 + 8.0


def test_the_prefix_rank_is_left_when_staying_would_raise_the_bottleneck_more() -> None:
    s, plugin = scheduler()
    group = [ep(1)]
    system = words("sys", 40)
    home = send(s, req(system + words("q0", 4), rid="a"), group)
    # The home rank is the group's bottleneck by far (as if long prompts had landed there).
    plugin.loads[group[0].key][home] += 10_000.0
    moved = send(s, req(system + words("q1", 400), rid="b"), group)
    assert moved != home  # 400 uncached tokens there would raise the peak by 400


def test_a_deep_queue_on_the_prefix_rank_spills_unless_queue_weight_is_zero() -> None:
    system = words("sys", 100)
    for weight, spills in ((None, True), (0, False)):
        config = (
            CONFIG
            if weight is None
            else CONFIG.replace(
                "blockSizeTokens: 4", f"blockSizeTokens: 4\n    queueWeight: {weight}"
            )
        )
        s, plugin = scheduler(config)
        group = [ep(1)]
        home = send(s, req(system + words("q0", 4), rid="a"), group)
        plugin.loads[group[0].key][home] += 5_000.0  # a deep queue behind the prefix
        again = send(s, req(system + words("q1", 4), rid="b"), group)
        assert (again != home) is spills, weight


def test_response_complete_releases_the_charge_and_timeout_expires_lost_ones() -> None:
    s, plugin = scheduler()
    group = [ep(1)]
    a, b = req(words("a", 40), rid="a"), req(words("b", 40), rid="b")
    send(s, a, group, now=0.0)
    send(s, b, group, now=1.0)
    assert sum(plugin.tokens_in_flight(group[0].key)) == 80.0
    s.response_complete(a, group[0].key, 2.0)
    assert sum(plugin.tokens_in_flight(group[0].key)) == 40.0
    s.response_complete(a, group[0].key, 2.5)  # a second completion releases nothing
    assert sum(plugin.tokens_in_flight(group[0].key)) == 40.0
    # b's completion is lost: after requestTimeout (2m) its charge is dropped.
    s.schedule(req("z" * 8, rid="z"), group, 121.5)
    assert sum(plugin.tokens_in_flight(group[0].key)) == 0.0


def test_rescheduling_a_request_moves_its_charge() -> None:
    s, plugin = scheduler()
    group = [ep(1)]
    r = req(words("a", 40), rid="same")
    send(s, r, group)
    # The retry (another prompt, so no prefix hit) goes to rank 1; rank 0's charge is undone.
    assert send(s, req(words("b", 40), rid="same"), group) == 1
    assert plugin.tokens_in_flight(group[0].key) == [0.0, 40.0, 0.0, 0.0]


def test_the_lighter_group_scores_higher_and_removed_groups_are_forgotten() -> None:
    s, plugin = scheduler()
    groups = [ep(1), ep(2)]
    for i in range(4):
        plugin.loads.setdefault(groups[0].key, [0.0] * 4)[i] = 500.0
    request = req(words("n", 40), rid="n")
    assert plugin.score(CycleState(now=0.0), request, groups) == [0.0, 1.0]
    result = s.schedule(request, groups, 0.0)
    assert result.primary.key == groups[1].key
    s.endpoint_removed(groups[0].key)
    assert plugin.tokens_in_flight(groups[0].key) == [0.0] * 4


class Source:
    """Per-rank prefix hits as an engine-side index would report them."""

    def __init__(self, hits: Mapping[int, int]) -> None:
        self.hits = dict(hits)
        self.asked: list[tuple[str, tuple[int, ...]]] = []

    def cached_tokens(
        self, request: LLMRequest, endpoint: Endpoint, ranks: Sequence[int]
    ) -> Mapping[int, int]:
        self.asked.append((endpoint.key, tuple(ranks)))
        return self.hits


def test_a_prefix_source_dependency_supplies_per_rank_hits() -> None:
    source = Source({2: 90, 9: 50})  # rank 9 is not in the group: ignored
    s, plugin = scheduler(dp_rank_prefix_source=source)
    assert send(s, req("x" * 400, rid="a"), [ep(1)]) == 2
    assert source.asked == [(ep(1).key, (0, 1, 2, 3))]
    assert plugin.tokens_in_flight(ep(1).key) == [0.0, 0.0, 10.0, 0.0]
    assert len(plugin.index) == 0  # the source is the truth: no routing history kept


def test_token_ids_count_when_the_request_has_them() -> None:
    s, plugin = scheduler()
    send(s, req("ab", rid="t", token_ids=list(range(30))), [ep(1)])
    assert sum(plugin.tokens_in_flight(ep(1).key)) == 30.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{}", "parameters.dataParallelSize: required"),
        ("{dataParallelSize: 0}", "parameters.dataParallelSize: input should be greater"),
        ("{dataParallelSize: 8, affinityWeight: -1}", "parameters.affinityWeight: input should"),
        ("{dataParallelSize: 8, queueWeight: -1}", "parameters.queueWeight: input should"),
        ("{dataParallelSize: 8, expectedDecodeTokens: x}", "parameters.expectedDecodeTokens:"),
        ("{dataParallelSize: 8, requestTimeout: soon}", "parameters.requestTimeout:"),
        ("{dataParallelSize: 8, ranks: 3}", "parameters.ranks: unknown parameter"),
    ],
)
def test_bad_parameters_are_one_line_naming_the_field(params: str, message: str) -> None:
    config = CONFIG.replace(
        "  parameters:\n    dataParallelSize: 4\n    expectedDecodeTokens: 0\n    blockSizeTokens: 4",
        f"  parameters: {params}",
    )
    with pytest.raises(ConfigError) as info:
        load_picker_config(config, seed=1)
    text = str(info.value)
    assert "\n" not in text
    assert "plugin 'dp-rank-balancer': " in text
    assert message in text


class KVManagerLike:
    """A synchronous prefix source answering as kvmanager's Score does, rank included."""

    def __init__(self, rank: int, blocks: int) -> None:
        self.rank, self.blocks = rank, blocks

    def score(self, request: LLMRequest, endpoints: Sequence[str]) -> PrefixScores:
        from llmd_epp.kvindex_client import KVIndexClient
        from llmd_sdk.contracts import kvindex

        resp = kvindex.ScoreResponse(
            scores=[
                kvindex.EndpointScore(
                    endpoint=e,
                    matched_blocks=self.blocks,
                    score=float(self.blocks),
                    data_parallel_rank=self.rank,
                )
                for e in endpoints
            ],
            total_blocks=8,
            block_size=16,
        )
        return KVIndexClient.scores_from(resp)


def test_kvmanagers_rank_of_the_longest_match_steers_the_rank() -> None:
    config = CONFIG.replace(
        "blockSizeTokens: 4",
        "blockSizeTokens: 4\n    prefixPluginName: precise-prefix-cache-scorer",
    ).replace(
        "- type: max-score-picker\n",
        "- type: max-score-picker\n- type: precise-prefix-cache-scorer\n",
    )
    s, plugin = scheduler(config, prefix_score_source=KVManagerLike(rank=3, blocks=6))
    # 128 prompt tokens, 6 blocks of 16 = 96 of them cached on rank 3 (kvmanager's answer).
    assert send(s, req("x" * 512, rid="a"), [ep(1)]) == 3
    assert plugin.tokens_in_flight(ep(1).key) == [0.0, 0.0, 0.0, 32.0]


def test_kvindex_client_keeps_the_best_match_and_the_rank_holding_it() -> None:
    from llmd_epp.kvindex_client import KVIndexClient
    from llmd_sdk.contracts import kvindex

    resp = kvindex.ScoreResponse(
        scores=[
            kvindex.EndpointScore(
                endpoint="a:1", matched_blocks=5, score=5.0, data_parallel_rank=2
            ),
            kvindex.EndpointScore(
                endpoint="b:1", matched_blocks=3, score=2.5, data_parallel_rank=-1
            ),
        ],
        total_blocks=9,
        block_size=32,
    )
    scores = KVIndexClient.scores_from(resp)
    assert scores.matched == {"a:1": 5, "b:1": 3} and scores.weighted == {"a:1": 5.0, "b:1": 2.5}
    assert scores.ranks == {"a:1": {2: 5}} and (scores.total_blocks, scores.block_size) == (9, 32)
