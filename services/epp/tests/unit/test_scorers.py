"""Each scorer against its upstream semantics."""

from __future__ import annotations

import pytest
from llmd_epp.scheduling import CycleState, Endpoint, ProfileResult, SchedulingResult
from llmd_epp.scheduling.framework import Handle
from llmd_epp.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from llmd_epp.scheduling.plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from llmd_epp.scheduling.plugins.load_aware_scorer import LoadAwareScorer
from llmd_epp.scheduling.plugins.lora_affinity_scorer import LoraAffinityScorer
from llmd_epp.scheduling.plugins.no_hit_lru_scorer import NoHitLRUScorer
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import (
    PrecisePrefixCacheScorer,
    PrefixScores,
)
from llmd_epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from llmd_epp.scheduling.plugins.queue_scorer import QueueScorer
from llmd_epp.scheduling.plugins.session_affinity_scorer import (
    SessionAffinityScorer,
    decode_token,
    encode_token,
)
from llmd_epp.scheduling.prefix_index import ApproxPrefixIndex, hash_prompt

from .helpers import ep, req

CYCLE = CycleState(now=0.0)


def decided(target: Endpoint, profile: str = "default") -> SchedulingResult:
    return SchedulingResult(profile, {profile: ProfileResult([target])})


def test_queue_scorer_is_min_max_over_candidates() -> None:
    eps = [ep(1, waiting=0), ep(2, waiting=5), ep(3, waiting=10)]
    assert QueueScorer().score(CYCLE, req(), eps) == [1.0, 0.5, 0.0]
    same = [ep(1, waiting=3), ep(2, waiting=3)]
    assert QueueScorer().score(CYCLE, req(), same) == [1.0, 1.0]


def test_kv_cache_utilization_scorer() -> None:
    eps = [ep(1, kv_usage=0.0), ep(2, kv_usage=0.25), ep(3, kv_usage=1.0)]
    assert KVCacheUtilizationScorer().score(CYCLE, req(), eps) == [1.0, 0.75, 0.0]


def test_load_aware_scorer_half_when_idle_zero_at_threshold() -> None:
    s = LoadAwareScorer(threshold=10)
    eps = [ep(1, waiting=0), ep(2, waiting=5), ep(3, waiting=10), ep(4, waiting=99)]
    assert s.score(CYCLE, req(), eps) == [0.5, 0.25, 0.0, 0.0]


def test_lora_affinity_scorer_tiers() -> None:
    eps = [
        ep(1, active_adapters=frozenset({"a"}), max_adapters=1),
        ep(2, active_adapters=frozenset({"b"}), max_adapters=4),
        ep(3, active_adapters=frozenset({"b"}), waiting_adapters=frozenset({"a"}), max_adapters=2),
        ep(4, active_adapters=frozenset({"b"}), max_adapters=1),
    ]
    assert LoraAffinityScorer().score(CYCLE, req(model="a"), eps) == [1.0, 0.8, 0.6, 0.0]


def test_active_request_scorer_counts_in_flight_and_releases() -> None:
    s = ActiveRequestScorer(request_timeout=60)
    a, b = ep(1), ep(2)
    assert s.score(CYCLE, req(), [a, b]) == [1.0, 1.0]
    for i in range(2):
        s.pre_request(req(rid=f"x{i}"), decided(a), now=0.0)
    s.pre_request(req(rid="y"), decided(b), now=0.0)
    assert s.score(CYCLE, req(), [a, b]) == [0.0, 0.5]
    s.response_complete(req(rid="x0"), a.key, 1.0, None)
    s.response_complete(req(rid="x1"), a.key, 1.0, None)
    assert s.score(CYCLE, req(), [a, b]) == [1.0, 0.0]


def test_active_request_scorer_expires_lost_requests() -> None:
    s = ActiveRequestScorer(request_timeout=10)
    a, b = ep(1), ep(2)
    s.pre_request(req(rid="lost"), decided(a), now=0.0)
    assert s.score(CycleState(now=5.0), req(), [a, b]) == [0.0, 1.0]
    assert s.score(CycleState(now=10.5), req(), [a, b]) == [1.0, 1.0]
    assert s.in_flight(a.key) == 0


def test_session_affinity_round_trip() -> None:
    s = SessionAffinityScorer()
    a, b = ep(1), ep(2)
    token = s.response_headers(req(), b.key)["x-session-token"]
    assert decode_token(token) == b.key
    assert s.score(CYCLE, req(headers={"x-session-token": token}), [a, b]) == [0.0, 1.0]
    assert s.score(CYCLE, req(), [a, b]) == [0.0, 0.0]
    assert s.score(CYCLE, req(headers={"x-session-token": "!!!"}), [a, b]) == [0.0, 0.0]
    assert decode_token(encode_token("[::1]:80")) == "[::1]:80"


def test_prefix_hashes_chain_and_cut_to_full_blocks() -> None:
    text = b"x" * 130
    hs = hash_prompt(text, "m", None, 64, 256)
    assert len(hs) == 2
    assert hs != hash_prompt(text, "other-model", None, 64, 256)
    assert hs != hash_prompt(text, "m", "salt", 64, 256)
    assert hash_prompt(b"x" * 63, "m", None, 64, 256) == []
    assert len(hash_prompt(b"x" * 6400, "m", None, 64, 3)) == 3
    # Same second block, different first: the chain makes block 2 differ too.
    assert (
        hash_prompt(b"a" * 64 + b"z" * 64, "m", None, 64, 9)[1]
        != hash_prompt(b"b" * 64 + b"z" * 64, "m", None, 64, 9)[1]
    )


def test_prefix_index_counts_leading_blocks_only() -> None:
    idx = ApproxPrefixIndex(100)
    idx.add([1, 2, 3], "A")
    idx.add([1, 2], "B")
    idx.add([1, 9, 3], "C")
    assert idx.match([1, 2, 3, 4]) == {"A": 3, "B": 2, "C": 1}
    assert idx.match([5, 1]) == {}
    idx.remove_endpoint("A")
    assert idx.match([1, 2, 3]) == {"B": 2, "C": 1}


def test_prefix_index_lru_evicts_per_endpoint() -> None:
    idx = ApproxPrefixIndex(3)
    idx.add([1, 2, 3], "A")
    idx.add([4], "A")  # evicts 1
    assert idx.match([1, 2]) == {}
    assert idx.match([2, 3, 4]) == {"A": 3}
    idx.add([2], "A")  # refresh 2, then 3 is the oldest
    idx.add([5], "A")
    assert idx.match([3]) == {}
    assert len(idx) == 3


def test_prefix_cache_scorer_converges_on_the_endpoint_it_routed_to() -> None:
    s = PrefixCacheScorer(block_chars=8)
    eps = [ep(1), ep(2), ep(3)]
    shared = "system prompt " * 8
    r1 = req(shared + "alpha: what is one?", rid="1")
    assert s.score(CYCLE, r1, eps) == [0.0, 0.0, 0.0]
    s.pre_request(r1, decided(eps[1]), 0.0)
    r2 = req(shared + "omega: what is two?", rid="2")
    scores = s.score(CYCLE, r2, eps)
    assert scores[0] == scores[2] == 0.0
    assert 0.7 < scores[1] < 1.0  # the shared part of the prompt
    s.endpoint_removed(eps[1].key)
    assert s.score(CYCLE, req(shared, rid="3"), eps) == [0.0, 0.0, 0.0]


def test_prefix_cache_scorer_params_as_upstream() -> None:
    h = Handle()
    p = PrefixCacheScorer.create("p", PrefixCacheScorer.Params(blockSizeTokens=32), h)
    assert p.block_chars == 128
    p = PrefixCacheScorer.create("p", PrefixCacheScorer.Params(blockSize=5), h)
    assert p.block_chars == 5
    p = PrefixCacheScorer.create("p", PrefixCacheScorer.Params(hashBlockSize=7), h)
    assert p.block_chars == 7
    p = PrefixCacheScorer.create("p", PrefixCacheScorer.Params(maxPrefixTokensToMatch=64), h)
    assert p.max_blocks == 4  # 64 tokens of 16-token blocks


def test_prefix_cache_autotune_follows_engine_block_size_and_capacity() -> None:
    s = PrefixCacheScorer(block_chars=64, lru_capacity=1000)
    eps = [ep(1, block_size=4, num_gpu_blocks=2), ep(2, block_size=4, num_gpu_blocks=2)]
    r = req("y" * 64, rid="a")
    s.score(CYCLE, r, eps)
    assert r.state[s.name].block_chars == 16  # 4 tokens * 4 chars
    s.pre_request(r, decided(eps[0]), 0.0)
    assert len(s.index) == 2  # 4 blocks, capacity 2 blocks from num_gpu_blocks


def test_no_hit_lru_spreads_cold_requests() -> None:
    h = Handle()
    prefix = PrefixCacheScorer("prefix-cache-scorer", block_chars=8)
    h.plugins[prefix.name] = prefix
    lru = NoHitLRUScorer.create("lru", NoHitLRUScorer.Params(), h)
    eps = [ep(1), ep(2), ep(3)]
    chosen = []
    for i in range(3):
        r = req(f"{i}: cold request number " * 3, rid=str(i))
        scores = lru.score(CYCLE, r, eps)
        best = eps[scores.index(max(scores))]
        chosen.append(best.key)
        prefix.score(CYCLE, r, eps)
        result = decided(best)
        lru.pre_request(r, result, 0.0)
        prefix.pre_request(r, result, 0.0)
    assert sorted(chosen) == sorted(e.key for e in eps)  # each endpoint got one cold request
    # The least recently used (first chosen) now ranks first among used endpoints.
    r = req("another cold one " * 3, rid="x")
    scores = lru.score(CYCLE, r, eps)
    assert eps[scores.index(max(scores))].key == chosen[0]
    # A warm request (shares a cached prefix) scores neutral everywhere.
    warm = req("0: cold request number " * 3, rid="w")
    assert lru.score(CYCLE, warm, eps) == [0.5, 0.5, 0.5]


class SyncIndex:
    def __init__(self, matched: dict[str, int]) -> None:
        self.matched = matched
        self.calls = 0

    def score(self, request: object, endpoints: list[str]) -> PrefixScores:
        self.calls += 1
        return PrefixScores(
            matched={k: self.matched.get(k, 0) for k in endpoints},
            weighted={k: float(self.matched.get(k, 0)) for k in endpoints},
            total_blocks=10,
            block_size=16,
        )


def test_precise_scorer_with_an_in_process_index_normalises() -> None:
    eps = [ep(1), ep(2), ep(3)]
    index = SyncIndex({eps[0].key: 2, eps[1].key: 8})
    s = PrecisePrefixCacheScorer(source=index)
    r = req("anything")
    assert s.score(CYCLE, r, eps) == [0.25, 1.0, 0.0]
    assert s.score(CYCLE, r, eps) == [0.25, 1.0, 0.0]
    assert index.calls == 1  # once per request
    pm = s.match_for(r, eps)
    assert pm is not None and pm.matches == {eps[0].key: 2, eps[1].key: 8}
    assert s.score(CYCLE, req("cold", rid="c"), [eps[2]]) == [0.0]


class AsyncIndex(SyncIndex):
    async def score(self, request: object, endpoints: list[str]) -> PrefixScores:  # type: ignore[override]
        return SyncIndex.score(self, request, endpoints)


class BrokenIndex:
    async def score(self, request: object, endpoints: list[str]) -> PrefixScores:
        raise ConnectionError("kvmanager down")


async def test_precise_scorer_prepares_asynchronously_and_degrades() -> None:
    eps = [ep(1), ep(2)]
    s = PrecisePrefixCacheScorer(source=AsyncIndex({eps[1].key: 3}))
    r = req("p")
    assert s.score(CYCLE, r, eps) == [0.0, 0.0]  # not prepared: no data, no I/O
    await s.prepare(r, eps)
    assert s.score(CYCLE, r, eps) == [0.0, 1.0]
    broken = PrecisePrefixCacheScorer(source=BrokenIndex())
    r2 = req("q", rid="2")
    await broken.prepare(r2, eps)
    assert broken.errors == 1
    assert broken.score(CYCLE, r2, eps) == [0.0, 0.0]


@pytest.mark.parametrize("scorer_cls", [QueueScorer, KVCacheUtilizationScorer, LoraAffinityScorer])
def test_stateless_scorers_stay_in_unit_range(scorer_cls: type) -> None:
    eps = [ep(i, waiting=i * 3, kv_usage=i / 10, max_adapters=i % 3) for i in range(10)]
    for v in scorer_cls().score(CYCLE, req(), eps):
        assert 0.0 <= v <= 1.0
