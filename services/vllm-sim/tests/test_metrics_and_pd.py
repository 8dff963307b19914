"""vLLM's Prometheus exposition and the P/D kv_transfer_params flow through the API."""

from __future__ import annotations

from typing import Any

from llmd_sim.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS
from prometheus_client.parser import text_string_to_metric_families

FAST = ("--time-scale", "0")


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metric_names_labels_and_buckets(make_sim: Any) -> None:
    async with make_sim("--time-scale", "0.01", "--served-model-name", "llama") as (client, _):
        for _ in range(2):
            r = await client.post(
                "/v1/completions",
                json={"model": "llama", "prompt": "word " * 40, "max_tokens": 5},
            )
            assert r.status_code == 200
        text = (await client.get("/metrics")).text
        fam = families(text)
        expected_types = {
            "vllm:num_requests_running": "gauge",
            "vllm:num_requests_waiting": "gauge",
            "vllm:kv_cache_usage_perc": "gauge",
            "vllm:prefix_cache_queries": "counter",
            "vllm:prefix_cache_hits": "counter",
            "vllm:request_success": "counter",
            "vllm:prompt_tokens": "counter",
            "vllm:generation_tokens": "counter",
            "vllm:num_preemptions": "counter",
            "vllm:time_to_first_token_seconds": "histogram",
            "vllm:inter_token_latency_seconds": "histogram",
            "vllm:e2e_request_latency_seconds": "histogram",
            "vllm:request_queue_time_seconds": "histogram",
            "vllm:request_prompt_tokens": "histogram",
        }
        for name, typ in expected_types.items():
            assert name in fam, name
            assert fam[name].type == typ, name
            for s in fam[name].samples:
                assert s.labels["model_name"] == "llama" and s.labels["engine"] == "0", s
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in fam.values()
            for s in f.samples
        }
        base = (("engine", "0"), ("model_name", "llama"))
        assert (
            samples[
                ("vllm:request_success_total", (*base[:1], ("finished_reason", "length"), base[1]))
            ]
            == 2
        )
        assert samples[("vllm:generation_tokens_total", base)] == 10
        queries = samples[("vllm:prefix_cache_queries_total", base)]
        hits = samples[("vllm:prefix_cache_hits_total", base)]
        assert queries > 0 and 0 < hits < queries  # second request hit the first one's blocks
        assert samples[("vllm:time_to_first_token_seconds_count", base)] == 2
        assert samples[("vllm:inter_token_latency_seconds_count", base)] == 8  # 4 gaps x 2
        assert samples[("vllm:e2e_request_latency_seconds_count", base)] == 2
        assert samples[("vllm:num_requests_running", base)] == 0

        def les(name: str) -> list[str]:
            return [s.labels["le"] for s in fam[name].samples if s.name.endswith("_bucket")]

        assert les("vllm:time_to_first_token_seconds") == [str(b) for b in TTFT_BUCKETS] + ["+Inf"]
        assert les("vllm:inter_token_latency_seconds") == [str(b) for b in ITL_BUCKETS] + ["+Inf"]
        assert les("vllm:e2e_request_latency_seconds") == [
            str(b) for b in REQUEST_LATENCY_BUCKETS
        ] + ["+Inf"]
        assert 'vllm:cache_config_info{block_size="16"' in text


async def test_prefill_then_decode_with_kv_transfer_params(make_sim: Any) -> None:
    pd = ("--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}')
    prompt = "token " * 300
    async with make_sim(*FAST, *pd) as (prefill, _), make_sim(*FAST, *pd) as (decode, dstate):
        p = await prefill.post(
            "/v1/completions",
            json={
                "model": "llmd-sim",
                "prompt": prompt,
                "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": True},
            },
        )
        params = p.json()["kv_transfer_params"]
        n = p.json()["usage"]["prompt_tokens"]
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert len(params["remote_block_ids"]) == n // 16
        assert {"remote_engine_id", "remote_host", "remote_port", "tp_size"} <= set(params)
        d = await decode.post(
            "/v1/completions",
            json={
                "model": "llmd-sim",
                "prompt": prompt,
                "max_tokens": 5,
                "kv_transfer_params": params,
            },
        )
        body = d.json()
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == min(n - 1, n // 16 * 16)
        assert body["usage"]["completion_tokens"] == 5
        stats = dstate.metrics.engines[0]
        assert stats.external_prefix_hits == body["usage"]["prompt_tokens_details"]["cached_tokens"]


async def test_kv_transfer_params_are_ignored_without_a_connector(make_sim: Any) -> None:
    async with make_sim(*FAST) as (client, _):
        r = await client.post(
            "/v1/completions",
            json={
                "model": "llmd-sim",
                "prompt": "x y z",
                "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": True},
            },
        )
        assert r.status_code == 200 and r.json()["kv_transfer_params"] is None
