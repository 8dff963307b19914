"""Engine /metrics text into the typed snapshot."""

from __future__ import annotations

import pytest
from llmd_epp.datalayer.extractor import (
    CoreMetricsExtractor,
    EngineConfig,
    MetricsMapping,
    MetricSpec,
)

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a",waiting_lora_adapters="c"} 1.6e9
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048"} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.5
# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 128.0
"""


def vllm() -> MetricsMapping:
    return CoreMetricsExtractor().default


def test_vllm_metrics_extracted() -> None:
    m = vllm().extract(VLLM, now=12.5)
    assert (m.waiting, m.running, m.kv_usage) == (7, 3, 0.42)
    assert m.active_adapters == {"a", "b"}  # the newest lora_requests_info series
    assert m.waiting_adapters == frozenset()
    assert m.max_adapters == 4
    assert (m.block_size, m.num_gpu_blocks) == (16, 2048)
    assert m.updated_at == 12.5


def test_series_of_several_models_add_up() -> None:
    text = VLLM.replace(
        'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="other"} 5.0\n',
    )
    text = text.replace(
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42\n',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="other"} 0.9\n',
    )
    m = vllm().extract(text, 0)
    assert (m.waiting, m.kv_usage) == (12, 0.9)


def test_missing_required_metric_is_an_error() -> None:
    text = "\n".join(line for line in VLLM.splitlines() if "kv_cache_usage" not in line)
    with pytest.raises(ValueError, match="vllm:kv_cache_usage_perc missing"):
        vllm().extract(text, 0)


def test_optional_lora_and_cache_info_may_be_absent() -> None:
    text = "\n".join(
        line for line in VLLM.splitlines() if "lora" not in line and "cache_config" not in line
    )
    m = vllm().extract(text, 0)
    assert m.max_adapters == 0 and m.block_size == 0 and m.waiting == 7


def test_label_matchers_in_specs() -> None:
    spec = MetricSpec.parse('vllm:num_requests_waiting{model_name="m", engine="0"}')
    assert spec == MetricSpec("vllm:num_requests_waiting", (("model_name", "m"), ("engine", "0")))
    cfg = EngineConfig(
        name="x",
        queuedRequestsSpec='vllm:num_requests_waiting{model_name="nope"}',
        kvUsageSpec="vllm:kv_cache_usage_perc",
    )
    with pytest.raises(ValueError, match="missing"):
        MetricsMapping(cfg).extract(VLLM, 0)
    with pytest.raises(ValueError):
        MetricSpec.parse("bad name{")


def test_engine_label_picks_the_mapping() -> None:
    ex = CoreMetricsExtractor()
    sg = ex.mapping_for({"inference.networking.k8s.io/engine-type": "sglang"})
    assert sg.engine == "sglang"
    text = "sglang:num_queue_reqs 2\nsglang:num_running_reqs 1\nsglang:token_usage 0.5\n"
    m = sg.extract(text, 0)
    assert (m.waiting, m.running, m.kv_usage) == (2, 1, 0.5)
    assert ex.mapping_for({}).engine == "vllm"
