"""Usage parsing, objectives, static endpoints, Kubernetes pod conversion, modelservice events."""

from __future__ import annotations

import json

import pytest
from llmd_epp.config import parse_settings
from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.sources.kubernetes import pod_endpoints, pool_selector_and_ports
from llmd_epp.datalayer.sources.modelservice import ModelServiceSource
from llmd_epp.datalayer.sources.static import parse_endpoint_list, parse_endpoints_file
from llmd_epp.objectives import Objectives, parse_objectives
from llmd_epp.scheduling import ConfigError
from llmd_epp.usage import UsageTracker


def test_usage_from_sse_stream_in_pieces() -> None:
    t = UsageTracker()
    events = [
        b'data: {"choices": [{"text": "a"}], "usage": null}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": 12, "comp',
        b'letion_tokens": 3, "total_tokens": 15}}\n\ndata: [DONE]\n\n',
    ]
    for e in events:
        t.feed(e)
    assert t.usage() == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_usage_from_json_body_and_absent() -> None:
    t = UsageTracker()
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    t.feed(body[:10].encode())
    t.feed(body[10:].encode())
    assert t.usage() == {"prompt_tokens": 4, "completion_tokens": 2}
    none = UsageTracker()
    none.feed(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
    assert none.usage() is None
    assert UsageTracker().usage() is None


def test_objectives_from_crs_and_mapping() -> None:
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 100, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1}
"""
    prios = parse_objectives(text)
    assert prios == {"critical": 100, "batch": -1}
    assert parse_objectives("standard: 0\nsheddable: -5") == {"standard": 0, "sheddable": -5}
    obj = Objectives(prios)
    assert obj.objective_of({"x-gateway-inference-objective": "batch"}) == "batch"
    assert obj.objective_of({"x-llm-d-inference-objective": "critical"}) == "critical"
    assert obj.priority("batch") == -1 and obj.priority("unknown") == 0 and obj.priority("") == 0
    with pytest.raises(ConfigError, match=r"spec.priority: priority must be an integer"):
        parse_objectives("kind: InferenceObjective\nmetadata: {name: x}\nspec: {priority: high}")


def test_static_endpoints() -> None:
    eps = parse_endpoint_list("10.0.0.1:8000, 10.0.0.2:8001")
    assert [e.key for e in eps] == ["10.0.0.1:8000", "10.0.0.2:8001"]
    with pytest.raises(ConfigError, match=r"--endpoints\[0\]: 'nohost' is not ip:port"):
        parse_endpoint_list("nohost")
    text = """
endpoints:
- {address: 10.1.0.1, ports: [8000, 8001], name: ns/p0, labels: {llm-d.ai/role: decode}}
- {address: 10.1.0.2, port: 8000}
"""
    eps = parse_endpoints_file(text, "eps.yaml")
    assert [(e.key, e.rank) for e in eps] == [
        ("10.1.0.1:8000", 0),
        ("10.1.0.1:8001", 1),
        ("10.1.0.2:8000", 0),
    ]
    assert eps[0].labels == {"llm-d.ai/role": "decode"}
    with pytest.raises(ConfigError, match=r"eps.yaml: endpoints.0: .*port or ports is required"):
        parse_endpoints_file("endpoints: [{address: x}]", "eps.yaml")


def test_datastore_replace_health_and_listeners() -> None:
    store = Datastore()
    removed: list[str] = []
    store.on_removed.append(lambda e: removed.append(e.key))
    store.replace(parse_endpoint_list("10.0.0.1:1,10.0.0.2:2"), "s")
    assert [e.key for e in store.candidates()] == ["10.0.0.1:1", "10.0.0.2:2"]
    store.set_unhealthy("10.0.0.1:1")
    assert [e.key for e in store.candidates()] == ["10.0.0.2:2"]
    store.set_metrics("10.0.0.1:1", store.get("10.0.0.1:1").metrics)  # type: ignore[union-attr]
    assert len(store.candidates()) == 2
    store.replace(parse_endpoint_list("10.0.0.2:2"), "s")
    assert removed == ["10.0.0.1:1"]


POD = {
    "metadata": {"name": "vllm-0", "namespace": "ns", "labels": {"app": "vllm"}},
    "status": {"podIP": "10.2.0.5", "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_kubernetes_pool_and_pods() -> None:
    v1 = {"spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]}}
    assert pool_selector_and_ports(v1) == ({"app": "vllm"}, [8000])
    v1a2 = {"spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000}}
    assert pool_selector_and_ports(v1a2) == ({"app": "vllm"}, [8000])
    eps = pod_endpoints(POD, [8000, 8001])
    assert [(e.key, e.rank, e.name) for e in eps] == [
        ("10.2.0.5:8000", 0, "ns/vllm-0"),
        ("10.2.0.5:8001", 1, "ns/vllm-0"),
    ]
    not_ready = {**POD, "status": {"podIP": "10.2.0.5", "conditions": []}}
    assert pod_endpoints(not_ready, [8000]) == []
    deleting = {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": "now"}}
    assert pod_endpoints(deleting, [8000]) == []


def ms_ep(port: int, state: str = "ready", role: str = "decode") -> dict[str, object]:
    return {"id": f"m-{port}", "model": "m", "role": role, "address": "127.0.0.1", "port": port,
            "state": state, "engine": "sim", "labels": {"llm-d.ai/model": "m"}}  # fmt: skip


def test_modelservice_watch_events() -> None:
    store = Datastore()
    src = ModelServiceSource("http://x")
    src.reset()
    assert src.apply(store, {"type": "ADDED", "revision": 1, "endpoint": ms_ep(8200)})
    assert src.apply(store, {"type": "ADDED", "revision": 2, "endpoint": ms_ep(8201)})
    assert len(store) == 0 and not store.synced  # snapshot still open
    src.apply(store, {"type": "BOOKMARK", "revision": 2, "synced": True})
    assert [e.key for e in store.candidates()] == ["127.0.0.1:8200", "127.0.0.1:8201"]
    assert store.get("127.0.0.1:8200").labels["llm-d.ai/role"] == "decode"  # type: ignore[union-attr]
    src.apply(store, {"type": "MODIFIED", "revision": 3, "endpoint": ms_ep(8200, "draining")})
    src.apply(store, {"type": "DELETED", "revision": 4, "endpoint": ms_ep(8201)})
    assert len(store) == 0
    src.apply(store, {"type": "ADDED", "revision": 5, "endpoint": ms_ep(8202)})
    assert [e.key for e in store.candidates()] == ["127.0.0.1:8202"]
    # Reconnect: the new snapshot replaces the view (8202 vanished while away).
    src.reset()
    src.apply(store, {"type": "ADDED", "revision": 9, "endpoint": ms_ep(8203)})
    src.apply(store, {"type": "BOOKMARK", "revision": 9, "synced": True})
    assert [e.key for e in store.candidates()] == ["127.0.0.1:8203"]
    assert not src.apply(store, {"type": "ERROR", "revision": 9, "message": "fell behind"})
    assert src.revision == 9


def test_settings_flags_env_and_errors() -> None:
    s = parse_settings(["--endpoints", "1.2.3.4:5"], env={"LLMD_EPP_GRPC_PORT": "9100"})
    assert s.grpc_port == 9100 and s.source_kind == "static"
    assert parse_settings(["--pool-name", "p"], env={}).source_kind == "kubernetes"
    with pytest.raises(ConfigError, match="exactly one source"):
        _ = parse_settings([], env={}).source_kind
    with pytest.raises(ConfigError, match="--flow-control"):
        parse_settings(["--flow-control", "maybe"], env={})
    with pytest.raises(ConfigError, match="LLMD_EPP_METRICS_PORT: expected int"):
        parse_settings([], env={"LLMD_EPP_METRICS_PORT": "x"})
    s = parse_settings(["--queue-ttl", "250ms", "--no-debug-scores"], env={})
    assert s.duration("queue_ttl") == 0.25
    with pytest.raises(ConfigError, match="--queue-ttl"):
        parse_settings(["--queue-ttl", "soon"], env={}).duration("queue_ttl")


def test_inference_objectives_of_the_pool() -> None:
    from llmd_epp.datalayer.sources.kubernetes import pool_objectives

    items = [
        {"metadata": {"name": "critical"}, "spec": {"priority": 10, "poolRef": {"name": "p"}}},
        {"metadata": {"name": "batch"}, "spec": {"priority": -1, "poolRef": {"name": "p"}}},
        {"metadata": {"name": "other"}, "spec": {"priority": 5, "poolRef": {"name": "q"}}},
        {"metadata": {"name": "plain"}, "spec": {"poolRef": {"name": "p"}}},
    ]
    assert pool_objectives(items, "p") == {"critical": 10, "batch": -1, "plain": 0}
