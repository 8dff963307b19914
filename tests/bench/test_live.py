"""The live benchmark's process specs: what the engines publish is what each router reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmd.bench.live import MODEL, EngineOptions, LiveCluster, RouterUnavailable
from llmd.local.logs import LogSink


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_engines_publish_kv_events_under_the_topic_vllm_router_reads(tmp_path: Path) -> None:
    """vllm-router's static --kv-event-source subscribes with vLLM's default empty topic and
    drops batches under any other topic (its kv_aware index then never matches), so the engines
    must not set one; kvmanager names each engine in its own config instead."""
    cluster = LiveCluster(EngineOptions(engines=2), LogSink(), tmp_path)
    for i in range(2):
        cfg = json.loads(_flag(list(cluster._engine(i).argv), "--kv-events-config"))
        assert cfg.get("topic", "") == ""
        assert cfg["endpoint"] == f"tcp://*:{cluster.zmq_ports[i]}"
    try:
        specs, _ = cluster.router_specs("vllm-router-kv", tmp_path)
    except RouterUnavailable:
        pytest.skip("vllm-router is not installed")
    argv = list(specs[0].argv)
    sources = [argv[i + 1] for i, a in enumerate(argv) if a == "--kv-event-source"]
    assert _flag(argv, "--kv-event-model") == MODEL
    assert sources == [
        f"http://{ep}=tcp://127.0.0.1:{z}"
        for ep, z in zip(cluster.endpoints, cluster.zmq_ports, strict=True)
    ]
