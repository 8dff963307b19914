from __future__ import annotations

from llmd_sdk.kvcache.events import BlockStored
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sim.engine import EngineConfig, EngineCore, Request, RequestStatus
from llmd_sim.latency import LatencyModel, load_profile

BS = 16
PROMPT = list(range(1000, 1000 + 200))  # 12 full blocks + 8 tokens


def engine(**cfg: object) -> EngineCore:
    return EngineCore(
        EngineConfig(num_gpu_blocks=64, max_num_batched_tokens=512, **cfg),  # type: ignore[arg-type]
        LatencyModel(load_profile()),
        BlockHasher("sha256", BS),
        enable_kv_events=True,
    )


def drain(eng: EngineCore, t: float = 0.0) -> float:
    while eng.has_unfinished():
        if not eng.has_work():
            wake = eng.next_wakeup()
            assert wake is not None
            t = max(t, wake)
        t = eng.step(t).end
    return t


def test_prefill_side_returns_nixl_style_kv_transfer_params() -> None:
    p = engine(engine_id="prefill-0", kv_side_channel_port=5601)
    r = Request("p1", PROMPT, [7], kv_transfer_params={"do_remote_decode": True})
    p.add_request(r)
    drain(p)
    assert r.status == RequestStatus.FINISHED_LENGTH_CAPPED
    params = r.kv_transfer_result
    assert params is not None
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert len(params["remote_block_ids"]) == 200 // BS
    assert params["remote_engine_id"] == "prefill-0" and params["remote_port"] == 5601
    assert params["remote_request_id"] == "p1" and params["tp_size"] == 1
    # The prefill engine keeps the blocks cached for the decode engine to read.
    assert all(p.kv.block_hash[b] is not None for b in params["remote_block_ids"])


def test_prefill_that_stops_early_returns_no_transfer_params() -> None:
    p = engine()
    r = Request("p1", PROMPT, [7], stop_at_end=True, kv_transfer_params={"do_remote_decode": True})
    p.add_request(r)
    drain(p)
    assert r.kv_transfer_result is None


def test_decode_side_skips_prefill_after_a_size_proportional_transfer() -> None:
    latency = LatencyModel(load_profile())
    # Baseline: an ordinary request computes all 200 prompt tokens.
    base = engine()
    plain = Request("plain", PROMPT, list(range(10)))
    base.add_request(plain)
    drain(base)
    # P/D: the decode engine pulls 12 blocks, then computes only what is left (8 tokens).
    d = engine()
    params = {"do_remote_prefill": True, "remote_block_ids": list(range(1, 13))}
    r = Request("d1", PROMPT, list(range(10)), kv_transfer_params=params)
    d.add_request(r)
    first = d.step(0.0)
    assert first.num_prefill_tokens == 0 and r.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    assert d.num_waiting == 1 and d.num_running == 0 and not d.has_work()
    transfer = latency.kv_transfer_time(12, BS)
    assert d.next_wakeup() == transfer
    # Loaded blocks are cached on arrival (BlockStored for 12 blocks).
    step = d.step(transfer)
    stored = [e for e in step.events if isinstance(e, BlockStored)]
    assert sum(len(e.block_hashes) for e in stored) == 12
    assert step.num_prefill_tokens == 200 - 12 * BS
    assert r.num_cached_tokens == 192 and r.num_external_cached_tokens == 192
    drain(d, step.end)
    assert r.num_output_tokens == 10
    ttft_pd = r.first_token_time
    assert ttft_pd < plain.first_token_time + transfer
    assert ttft_pd > transfer


def test_remote_blocks_covering_the_whole_prompt_still_compute_the_last_token() -> None:
    d = engine()
    prompt = list(range(64))  # 4 full blocks
    params = {"do_remote_prefill": True, "remote_block_ids": [1, 2, 3, 4]}
    r = Request("d1", prompt, [1, 2], kv_transfer_params=params)
    d.add_request(r)
    d.step(0.0)
    res = d.step(d.next_wakeup() or 0.0)
    assert res.num_prefill_tokens == 1 and r.num_cached_tokens == 63


def test_cpu_offload_brings_back_evicted_prefix_faster_than_recompute() -> None:
    latency = LatencyModel(load_profile())

    def run(cpu_blocks: int) -> tuple[Request, float]:
        eng = EngineCore(
            EngineConfig(
                num_gpu_blocks=20, max_num_batched_tokens=512, cpu_offload_blocks=cpu_blocks
            ),
            latency,
            BlockHasher("sha256", BS),
            enable_kv_events=True,
        )
        eng.add_request(Request("a", PROMPT, [1]))
        drain(eng)
        # Evict everything `a` cached with unrelated prompts.
        eng.add_request(Request("x", list(range(5000, 5000 + 290)), [1]))
        drain(eng)
        again = Request("a2", PROMPT, [1])
        eng.add_request(again)
        res = eng.step(0.0)
        return again, res.duration

    cold, t_cold = run(0)
    warm, t_warm = run(64)
    assert cold.num_cached_tokens == 0
    assert warm.num_cached_tokens == 192 and warm.num_external_cached_tokens == 192
    assert t_warm < t_cold
    assert t_warm >= latency.cpu_load_time(12, BS)
