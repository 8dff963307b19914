"""Behaviour pins for the discrete-event simulator.

The pinned numbers were computed by the code *before* the DES performance work (branch
``simperf``) and must not move when the hot paths are rewritten: a performance change that alters
any scheduling decision, timing or KV event changes a digest here. Each scenario also pins a few
readable totals so that a failure says roughly what moved. A deliberate behaviour change updates
these pins in the same commit and says why.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import msgspec
import pytest
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sim.cluster import ClusterResult, ClusterSimulator
from llmd_sim.engine import EngineConfig, EngineCore, FastBlockHasher, LoRA, Request
from llmd_sim.latency import LatencyModel, load_profile
from llmd_sim.routers import LeastLoadedRouter, PrefixAwareRouter, RoundRobinRouter
from llmd_sim.trace import SyntheticWorkload, TraceRequest


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _cluster_pin(res: ClusterResult) -> dict[str, Any]:
    recs = sorted(res.records, key=lambda r: r.request_id)
    rows = [
        (
            r.request_id,
            r.engine,
            r.prompt_tokens,
            r.output_tokens,
            r.cached_tokens,
            r.first_token,
            r.finish,
            r.preemptions,
        )
        for r in recs
    ]
    return {
        "finished": len(recs),
        "output_tokens": sum(r.output_tokens for r in recs),
        "cached_tokens": sum(r.cached_tokens for r in recs),
        "preemptions": sum(r.preemptions for r in recs),
        "steps": res.steps,
        "ttft_sum_s": round(sum(r.ttft for r in recs), 6),
        "e2e_sum_s": round(sum(r.e2e for r in recs), 6),
        "digest": _digest(rows),
    }


def _sim(router: object, engines: int, blocks: int, **kw: Any) -> ClusterSimulator:
    return ClusterSimulator(
        engines,
        EngineConfig(num_gpu_blocks=blocks, **kw),
        LatencyModel(load_profile()),
        router,  # type: ignore[arg-type]
    )


WORK = SyntheticWorkload(
    num_requests=600, rate_per_s=80, num_prefixes=12, prefix_len=256, output_len=(4, 96), seed=11
)


def _lora_trace() -> list[TraceRequest]:
    trace = list(SyntheticWorkload(num_requests=200, rate_per_s=50, num_prefixes=4, seed=5))
    for i, tr in enumerate(trace):
        if i % 3 == 0:
            tr.lora = f"adapter-{i % 2}"
    return trace


CLUSTER_PINS: dict[str, dict[str, Any]] = {
    "round_robin": {
        "finished": 600,
        "output_tokens": 29535,
        "cached_tokens": 141824,
        "preemptions": 0,
        "steps": 2792,
        "ttft_sum_s": 12.449189,
        "e2e_sum_s": 352.392985,
        "digest": "c2fcde3aacbdc5b7",
    },
    "preempting": {
        "finished": 600,
        "output_tokens": 29535,
        "cached_tokens": 101088,
        "preemptions": 115,
        "steps": 4137,
        "ttft_sum_s": 12002.215926,
        "e2e_sum_s": 12343.487212,
        "digest": "0e2c095bd39885f4",
    },
    "prefix_aware_lora": {
        "finished": 200,
        "output_tokens": 28288,
        "cached_tokens": 176480,
        "preemptions": 72,
        "steps": 2065,
        "ttft_sum_s": 181.274463,
        "e2e_sum_s": 536.666812,
        "digest": "c4dd5da658fae409",
    },
}


def test_round_robin_cluster_run_is_unchanged() -> None:
    res = _sim(RoundRobinRouter(), engines=4, blocks=4000).run(iter(WORK))
    assert _cluster_pin(res) == CLUSTER_PINS["round_robin"]


def test_preempting_single_engine_run_is_unchanged() -> None:
    res = _sim(LeastLoadedRouter(), engines=1, blocks=160, max_num_seqs=32).run(iter(WORK))
    pin = _cluster_pin(res)
    assert pin["preemptions"] > 0  # the scenario must exercise preemption
    assert pin == CLUSTER_PINS["preempting"]


def test_prefix_aware_lora_run_is_unchanged() -> None:
    res = _sim(PrefixAwareRouter(), engines=3, blocks=600, max_loras=1).run(iter(_lora_trace()))
    assert _cluster_pin(res) == CLUSTER_PINS["prefix_aware_lora"]


def _engine_pin(hasher: Any, cpu_blocks: int, seed: int, tagged: bool = True) -> dict[str, Any]:
    """One engine with KV events, LoRA and (optionally) a CPU tier, every step recorded.

    `tagged=False` leaves LoRA and cache salts out: FastBlockHasher mixes their str hash into
    block hashes, which PYTHONHASHSEED randomises per process.
    """
    cfg = EngineConfig(
        num_gpu_blocks=40,
        max_num_batched_tokens=128,
        max_num_seqs=8,
        max_loras=2,
        cpu_offload_blocks=cpu_blocks,
    )
    eng = EngineCore(cfg, LatencyModel(load_profile()), hasher, enable_kv_events=True)
    rnd = random.Random(seed)
    shared = [rnd.randrange(8000) for _ in range(96)]
    loras = [None, LoRA("a", 1, "/a"), LoRA("b", 2, "/b"), LoRA("c", 3, "/c")]
    pending = []
    for i in range(60):
        prompt = shared[: rnd.randrange(0, 97)] + [
            rnd.randrange(8000) for _ in range(rnd.randrange(1, 70))
        ]
        out = list(range(9000, 9000 + rnd.randrange(1, 80)))
        lora = loras[rnd.randrange(4)] if rnd.random() < 0.3 and tagged else None
        salt = "s" if rnd.random() < 0.1 and tagged else None
        pending.append(
            (rnd.randrange(0, 400), Request(f"q{i}", prompt, out, lora=lora, cache_salt=salt))
        )
    pending.sort(key=lambda p: p[0])
    enc = msgspec.msgpack.Encoder()
    rows: list[Any] = []
    n_events = 0
    t = 0.0
    step = 0
    while pending or eng.has_unfinished():
        while pending and pending[0][0] <= step:
            eng.add_request(pending.pop(0)[1])
        res = eng.step(t)
        n_events += len(res.events)
        rows.append(
            (
                res.duration,
                res.num_prefill_tokens,
                res.num_decode_seqs,
                res.decode_context_tokens,
                res.num_generated,
                [r.request_id for r in res.first_tokens],
                [(r.request_id, r.num_output_tokens, r.finish_reason) for r in res.finished],
                [r.request_id for r in res.preempted],
                [enc.encode(e) for e in res.events],
            )
        )
        t = res.end
        step += 1
        assert step < 50_000
    st = eng.kv.stats
    return {
        "steps": step,
        "events": n_events,
        "preemptions": eng.num_preemptions_total,
        "generated": eng.num_generation_tokens_total,
        "hits": (st.queries, st.hits, st.external_queries, st.external_hits),
        "end_s": round(t, 9),
        "digest": _digest(rows),
    }


ENGINE_PINS: dict[str, dict[str, Any]] = {
    "sha256": {
        "steps": 470,
        "events": 564,
        "preemptions": 30,
        "generated": 2437,
        "hits": (7602, 3120, 0, 0),
        "end_s": 4.962904132,
        "digest": "6a2af9d0720eb961",
    },
    "sha256_cpu_tier": {
        "steps": 471,
        "events": 1173,
        "preemptions": 25,
        "generated": 2437,
        "hits": (7137, 2960, 4177, 688),
        "end_s": 4.954886947,
        "digest": "55a3a90892c1bbea",
    },
    "fast": {
        "steps": 427,
        "events": 458,
        "preemptions": 11,
        "generated": 2281,
        "hits": (6073, 3152, 0, 0),
        "end_s": 4.51752441,
        "digest": "3b53a5439007f5cf",
    },
    "fast_cpu_tier": {
        "steps": 427,
        "events": 928,
        "preemptions": 11,
        "generated": 2281,
        "hits": (6073, 3136, 2937, 288),
        "end_s": 4.511504273,
        "digest": "0ecfb3db83145da4",
    },
}


@pytest.mark.parametrize(
    ("name", "hasher", "cpu_blocks", "tagged"),
    [
        ("sha256", BlockHasher("sha256", 16), 0, True),
        ("sha256_cpu_tier", BlockHasher("sha256", 16), 24, True),
        ("fast", FastBlockHasher(16), 0, False),
        ("fast_cpu_tier", FastBlockHasher(16), 24, False),
    ],
)
def test_engine_steps_and_kv_events_are_unchanged(
    name: str, hasher: Any, cpu_blocks: int, tagged: bool
) -> None:
    pin = _engine_pin(hasher, cpu_blocks, seed=7, tagged=tagged)
    assert pin["preemptions"] > 0 and pin["events"] > 0
    assert pin == ENGINE_PINS[name]
