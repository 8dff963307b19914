from __future__ import annotations

import io
from collections.abc import Sequence

import pytest
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sim.cluster import ClusterSimulator, EngineView
from llmd_sim.engine import EngineConfig
from llmd_sim.latency import LatencyModel, load_profile
from llmd_sim.routers import LeastLoadedRouter, PrefixAwareRouter, RandomRouter, RoundRobinRouter
from llmd_sim.trace import SyntheticWorkload, TraceRequest, parse_line, read_trace, write_trace

WORK = SyntheticWorkload(
    num_requests=400, rate_per_s=60, num_prefixes=8, prefix_len=512, output_len=(8, 64), seed=3
)


def sim(router: object, engines: int = 4, **kw: object) -> ClusterSimulator:
    return ClusterSimulator(
        engines,
        EngineConfig(num_gpu_blocks=int(kw.pop("blocks", 4000))),  # type: ignore[call-overload]
        LatencyModel(load_profile()),
        router,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_every_request_completes_with_sane_timings() -> None:
    res = sim(RoundRobinRouter()).run(iter(WORK))
    assert len(res.records) == 400 and sum(res.per_engine_requests) == 400
    assert res.per_engine_requests == [100, 100, 100, 100]
    for r in res.records:
        assert 0 < r.ttft <= r.e2e and r.first_token >= r.arrival
        assert 8 <= r.output_tokens <= 64
    summary = res.summary()
    assert summary["requests"] == 400 and summary["sim_time_s"] > 400 / 60 * 0.8
    assert summary["sim_requests_per_cpu_s"] > 0


def test_runs_are_deterministic() -> None:
    a = sim(RandomRouter(1)).run(iter(WORK)).summary()
    b = sim(RandomRouter(1)).run(iter(WORK)).summary()
    for key in ("ttft_mean_s", "e2e_p99_s", "prefix_hit_rate", "engine_steps", "sim_time_s"):
        assert a[key] == b[key]


def test_prefix_aware_routing_beats_round_robin_on_shared_prefixes() -> None:
    rr = sim(RoundRobinRouter(), engines=8).run(iter(WORK)).summary()
    pa = sim(PrefixAwareRouter(), engines=8).run(iter(WORK)).summary()
    assert pa["prefix_hit_rate"] > rr["prefix_hit_rate"]
    assert pa["ttft_mean_s"] < rr["ttft_mean_s"]


def test_views_expose_load_and_cached_prefixes() -> None:
    seen: list[tuple[int, int, int]] = []

    class Spy:
        def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
            assert request.block_hashes is not None
            seen.append(
                (engines[0].num_running + engines[0].num_waiting,
                 engines[0].cached_prefix_blocks(request.block_hashes),
                 len(request.block_hashes))
            )  # fmt: skip
            return 0

    trace = [TraceRequest(f"r{i}", i * 0.001, list(range(100)), 200) for i in range(3)]
    sim(Spy(), engines=2).run(iter(trace))
    assert seen[0] == (0, 0, 6)
    # The second arrival sees the first request on the engine and its 6 cached blocks.
    assert seen[1][0] == 1 and seen[1][1] == 6


def test_bad_router_index_is_an_error() -> None:
    class Bad:
        def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
            return len(engines)

    with pytest.raises(ValueError, match="router returned engine"):
        sim(Bad()).run(iter(WORK))


def test_preemption_under_memory_pressure_still_finishes_everything() -> None:
    res = sim(LeastLoadedRouter(), engines=1, blocks=300).run(iter(WORK))
    assert len(res.records) == 400
    assert res.summary()["preemptions"] > 0


def test_vllm_hasher_works_in_the_cluster() -> None:
    trace = list(SyntheticWorkload(num_requests=50, rate_per_s=50, num_prefixes=2, seed=1))
    res = sim(PrefixAwareRouter(), engines=2, hasher=BlockHasher("sha256", 16)).run(iter(trace))
    assert len(res.records) == 50 and res.summary()["prefix_hit_rate"] > 0.3


def test_trace_jsonl_round_trip_and_errors(tmp_path: object) -> None:
    buf = io.StringIO()
    reqs = list(SyntheticWorkload(num_requests=5, num_prefixes=2, seed=2))
    assert write_trace(iter(reqs), buf) == 5
    path = tmp_path / "t.jsonl"  # type: ignore[operator]
    path.write_text(buf.getvalue())
    back = list(read_trace(path))
    assert [(r.request_id, r.prompt_token_ids, r.output_len) for r in back] == [
        (r.request_id, r.prompt_token_ids, r.output_len) for r in reqs
    ]
    assert parse_line('{"prompt_len": 40, "output_len": 3, "arrival_s": 1}').num_prompt_tokens == 40
    for bad, needle in [
        ("{", "not valid JSON"),
        ('{"output_len": 3}', "prompt_token_ids or a positive prompt_len"),
        ('{"prompt_len": 3, "output_len": 0}', "output_len"),
        ('{"prompt_len": 3, "output_len": 1, "arrival_s": -1}', "arrival_s"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_line(bad, 7)


def test_run_pauses_the_cyclic_gc_and_restores_its_state() -> None:
    import gc

    seen: list[bool] = []

    class Probe(RoundRobinRouter):
        def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int:
            seen.append(gc.isenabled())
            return super().route(request, engines)

    trace = list(SyntheticWorkload(num_requests=5, rate_per_s=50, num_prefixes=1, seed=2))
    was = gc.isenabled()
    try:
        gc.enable()
        sim(Probe(), engines=1).run(iter(trace))
        assert gc.isenabled() and seen and not any(seen)
        gc.disable()
        sim(Probe(), engines=1).run(iter(trace))
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()
