"""The sim's fast `/metrics` renderer against prometheus-client's own exposition."""

from __future__ import annotations

import random

import pytest
from llmd_sdk.telemetry import new_registry
from llmd_sim.metrics import VllmMetrics
from prometheus_client import generate_latest


def _populated(engines: int, lora: bool, model: str, seed: int) -> VllmMetrics:
    rnd = random.Random(seed)
    m = VllmMetrics(
        model,
        engines,
        8192,
        cache_config={
            "block_size": "16",
            "num_gpu_blocks": "8192",
            "prefix_caching_hash_algo": "sha256",
        },
        max_loras=2 if lora else None,
    )
    for stats in m.engines:
        stats.num_running = rnd.randint(0, 64)
        stats.num_waiting = rnd.randint(0, 9)
        stats.kv_cache_usage = rnd.random()
        stats.prefix_hits = rnd.randint(0, 10**9)
        stats.generation_tokens = rnd.randint(0, 10**6)
        stats.request_success["stop"] = rnd.randint(0, 1000)
        for hist in (stats.ttft, stats.itl, stats.e2e, stats.request_prompt_tokens, stats.n_param):
            for _ in range(rnd.randint(0, 40)):
                hist.observe(rnd.expovariate(0.5) * rnd.choice((1, 1000)), rnd.randint(1, 5))
    if m.lora is not None:
        m.lora.running, m.lora.waiting = "ski-resorts", "a,b"
    return m


@pytest.mark.parametrize(
    ("engines", "lora", "model", "seed"),
    [
        (1, False, "meta-llama/Llama-3.1-8B-Instruct", 0),
        (2, True, "Qwen/Qwen3-0.6B", 1),
        (4, False, 'odd "model"\\name\nwith newline', 2),
        (1, True, "empty", 3),
    ],
)
def test_render_is_byte_for_byte_what_generate_latest_writes(
    engines: int, lora: bool, model: str, seed: int
) -> None:
    m = _populated(engines, lora, model, seed)
    registry = new_registry()
    m.register(registry)
    assert m.render() == generate_latest(registry)
    # Values change between scrapes; the cached prefixes must not go stale.
    m.engines[0].num_waiting += 3
    m.engines[-1].ttft.observe(0.02, 7)
    assert m.render() == generate_latest(registry)
