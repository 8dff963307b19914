from __future__ import annotations

import random

import msgspec
import pytest
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sim.engine import EngineConfig, EngineCore, LoRA, Request, RequestStatus
from llmd_sim.latency import LatencyModel, load_profile, zero_profile

from .reference import ReferenceScheduler

BS = 16


def make_engine(**kw: object) -> EngineCore:
    cfg = EngineConfig(
        num_gpu_blocks=int(kw.pop("num_gpu_blocks", 64)),  # type: ignore[call-overload]
        max_num_batched_tokens=int(kw.pop("max_num_batched_tokens", 128)),  # type: ignore[call-overload]
        max_num_seqs=int(kw.pop("max_num_seqs", 8)),  # type: ignore[call-overload]
        max_model_len=int(kw.pop("max_model_len", 4096)),  # type: ignore[call-overload]
        max_loras=int(kw.pop("max_loras", 1)),  # type: ignore[call-overload]
        cpu_offload_blocks=int(kw.pop("cpu_offload_blocks", 0)),  # type: ignore[call-overload]
    )
    return EngineCore(
        cfg,
        LatencyModel(load_profile()),
        BlockHasher("sha256", BS),
        enable_kv_events=True,
        **kw,  # type: ignore[arg-type]
    )


def req(rid: str, prompt: list[int], out: int, **kw: object) -> Request:
    return Request(rid, list(prompt), list(range(5000, 5000 + out)), **kw)  # type: ignore[arg-type]


def run_all(eng: EngineCore, limit: int = 10_000) -> list:
    steps = []
    t = 0.0
    while eng.has_unfinished() and len(steps) < limit:
        res = eng.step(t)
        t = res.end
        steps.append(res)
    assert not eng.has_unfinished()
    return steps


def test_chunked_prefill_respects_the_token_budget() -> None:
    eng = make_engine(max_num_batched_tokens=64)
    eng.add_request(req("a", list(range(150)), 3))
    steps = run_all(eng)
    assert [s.num_prefill_tokens for s in steps[:3]] == [64, 64, 22]
    assert [s.num_decode_seqs for s in steps] == [0, 0, 0, 1, 1]
    assert steps[2].first_tokens and steps[2].first_tokens[0].request_id == "a"
    assert steps[-1].finished[0].num_output_tokens == 3


def test_max_num_seqs_caps_the_running_batch() -> None:
    eng = make_engine(max_num_seqs=2, max_num_batched_tokens=512)
    for i in range(5):
        eng.add_request(req(f"r{i}", [i] * 20, 4))
    eng.step(0.0)
    assert (eng.num_running, eng.num_waiting) == (2, 3)


def test_prefix_hit_leaves_one_token_to_compute_and_reports_cached_tokens() -> None:
    eng = make_engine()
    prompt = list(range(64))  # exactly 4 blocks
    eng.add_request(req("a", prompt, 2))
    run_all(eng)
    eng.add_request(req("b", prompt, 2))
    first = eng.step(0.0)
    # 3 blocks are reused: the 4th would leave nothing to compute, so it is recomputed.
    assert first.num_prefill_tokens == 64 - 48
    b = first.first_tokens[0]
    assert b.num_cached_tokens == 48
    assert eng.kv.stats.hits == 48 and eng.kv.stats.queries == 128


def test_decode_blocks_are_cached_when_full_and_hit_by_a_follow_up() -> None:
    eng = make_engine()
    eng.add_request(Request("a", list(range(20)), list(range(900, 930))))
    run_all(eng)
    # Turn two: the prompt is turn one's prompt + its answer + more.
    follow = list(range(20)) + list(range(900, 930)) + [1, 2, 3]
    eng.add_request(req("b", follow, 1))
    res = eng.step(0.0)
    assert res.first_tokens[0].num_cached_tokens == 48  # 3 full blocks, 2 of them decoded tokens


def test_preemption_evicts_the_last_running_request_and_recomputes_it() -> None:
    # 9 usable blocks; three requests of 40-token prompts that grow by decoding.
    eng = make_engine(num_gpu_blocks=10, max_num_batched_tokens=256)
    for i in range(3):
        eng.add_request(req(f"r{i}", [100 * i + k for k in range(40)], 40))
    steps = run_all(eng)
    preempted = [r.request_id for s in steps for r in s.preempted]
    assert preempted and preempted[0] == "r2"  # the last admitted goes first
    finished = {r.request_id: r for s in steps for r in s.finished}
    assert all(finished[f"r{i}"].num_output_tokens == 40 for i in range(3))
    assert finished["r2"].num_preemptions >= 1
    assert eng.num_preemptions_total == len(preempted)
    assert eng.kv.num_free_blocks == 9


def test_max_loras_keeps_a_second_adapter_waiting() -> None:
    eng = make_engine(max_loras=1, max_num_batched_tokens=512)
    eng.add_request(req("a1", [1] * 20, 5, lora=LoRA("a", 1, "/a")))
    eng.add_request(req("b1", [2] * 20, 5, lora=LoRA("b", 2, "/b")))
    eng.add_request(req("a2", [3] * 20, 5, lora=LoRA("a", 1, "/a")))
    eng.add_request(req("base", [4] * 20, 5))
    eng.step(0.0)
    running = {r.request_id for r in eng.running}
    assert running == {"a1", "a2", "base"}
    assert [r.request_id for r in eng.waiting] == ["b1"]
    assert eng.lora_adapters() == ({"a": 2}, {"b": 1})
    steps = run_all(eng)
    assert {r.request_id for s in steps for r in s.finished} == {"a1", "a2", "base", "b1"}


def test_lora_requests_do_not_share_cache_with_the_base_model() -> None:
    eng = make_engine()
    eng.add_request(req("base", list(range(64)), 1))
    run_all(eng)
    eng.add_request(req("lora", list(range(64)), 1, lora=LoRA("a", 1, "/a")))
    res = eng.step(0.0)
    assert res.first_tokens[0].num_cached_tokens == 0


def test_abort_frees_blocks_wherever_the_request_is() -> None:
    eng = make_engine()
    eng.add_request(req("a", list(range(40)), 50))
    eng.add_request(req("b", list(range(100, 140)), 50))
    for _ in range(5):
        eng.step(0.0)
    assert eng.abort_request("a") is not None
    assert eng.abort_request("nope") is None
    run_all(eng)
    assert eng.kv.num_free_blocks == eng.kv.num_usable_blocks


def test_prompt_longer_than_max_model_len_is_refused_and_output_is_capped() -> None:
    eng = make_engine(max_model_len=100)
    with pytest.raises(ValueError, match="max_model_len"):
        eng.add_request(req("big", [1] * 100, 1))
    r = req("cap", [1] * 90, 50, stop_at_end=True)
    eng.add_request(r)
    run_all(eng)
    assert (r.num_output_tokens, r.finish_reason) == (10, "length")


def test_stop_at_end_reports_stop() -> None:
    eng = make_engine()
    r = req("s", [1] * 10, 3, stop_at_end=True)
    eng.add_request(r)
    run_all(eng)
    assert r.status == RequestStatus.FINISHED_STOPPED and r.finish_reason == "stop"


def test_reset_prefix_cache_refused_while_busy_then_clears() -> None:
    eng = make_engine()
    eng.add_request(req("a", list(range(40)), 5))
    eng.step(0.0)
    assert not eng.reset_prefix_cache()
    run_all(eng)
    eng.kv.take_events()
    assert eng.reset_prefix_cache()
    assert [type(e).__name__ for e in eng.kv.take_events()] == ["AllBlocksCleared"]
    assert not eng.kv.cached


def _workload(seed: int) -> list[tuple[str, list[int], int, float]]:
    rnd = random.Random(seed)
    shared = [rnd.randrange(8000) for _ in range(48)]
    out = []
    for i in range(24):
        n = rnd.randrange(1, 90)
        prompt = (shared[: rnd.randrange(0, 49)] if rnd.random() < 0.6 else []) + [
            rnd.randrange(8000) for _ in range(n)
        ]
        out.append((f"r{i}", prompt, rnd.randrange(1, 60), rnd.random()))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("blocks", [12, 24, 200])
def test_engine_matches_the_naive_reference_step_by_step(seed: int, blocks: int) -> None:
    cfg = EngineConfig(num_gpu_blocks=blocks, max_num_batched_tokens=96, max_num_seqs=6)
    latency = LatencyModel(load_profile())
    eng = EngineCore(cfg, latency, BlockHasher("sha256", BS), enable_kv_events=True)
    ref = ReferenceScheduler(cfg, latency, BlockHasher("sha256", BS))
    work = _workload(seed)
    arrivals = sorted(work, key=lambda w: w[3])
    step = 0
    enc = msgspec.msgpack.Encoder()
    while arrivals or ref.unfinished:
        # Add requests at deterministic steps so both see the same arrivals.
        while arrivals and arrivals[0][3] * 40 <= step:
            rid, prompt, out, _ = arrivals.pop(0)
            for target in (eng, ref):
                target.add_request(Request(rid, list(prompt), list(range(7000, 7000 + out))))
        got = eng.step(float(step))
        want = ref.step()
        where = f"seed {seed} blocks {blocks} step {step}"
        assert got.num_prefill_tokens == want.num_prefill_tokens, where
        assert got.num_decode_seqs == want.num_decode_seqs, where
        assert got.duration == pytest.approx(want.duration), where
        assert [r.request_id for r in got.preempted] == want.preempted, where
        assert sorted(r.request_id for r in got.first_tokens) == sorted(want.first_tokens), where
        got_fin = sorted((r.request_id, r.num_output_tokens, r.finish_reason) for r in got.finished)
        assert got_fin == sorted(want.finished), where
        assert [enc.encode(e) for e in got.events] == [enc.encode(e) for e in want.events], where
        step += 1
        assert step < 20_000
    assert not eng.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.num_usable_blocks


def test_zero_latency_profile_gives_zero_duration() -> None:
    eng = EngineCore(EngineConfig(), LatencyModel(zero_profile()), BlockHasher())
    eng.add_request(req("a", [1] * 10, 2))
    assert eng.step(0.0).duration == 0.0
