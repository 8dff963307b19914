"""The JSON that engines take for KV events (`--kv-events-config`) and KV transfer.

Topic convention: `kv@<ip:port>@<model>` names the publishing engine by the address the EPP
routes to, so the kvmanager can key its index by endpoint without a side channel.
"""

from __future__ import annotations

import json
from typing import Any

from llmd_modelservice.spec import KVEventsSpec, KVTransferSpec


def kv_topic(address: str, port: int | str, model: str) -> str:
    return f"kv@{address}:{port}@{model}"


def kv_events_config(
    spec: KVEventsSpec,
    *,
    topic: str,
    bind_port: int | None,
    replay_port: int | None,
) -> dict[str, Any]:
    """vLLM's KVEventsConfig fields. `bind_port` is used in bind mode, else `spec.endpoint`."""
    endpoint = f"tcp://*:{bind_port}" if spec.mode == "bind" else spec.endpoint
    cfg: dict[str, Any] = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": endpoint,
        "topic": topic,
    }
    if replay_port is not None:
        cfg["replay_endpoint"] = f"tcp://*:{replay_port}"
    if spec.buffer_steps is not None:
        cfg["buffer_steps"] = spec.buffer_steps
    if spec.hwm is not None:
        cfg["hwm"] = spec.hwm
    if spec.max_queue_size is not None:
        cfg["max_queue_size"] = spec.max_queue_size
    return cfg


def kv_transfer_config(spec: KVTransferSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {"kv_connector": spec.connector, "kv_role": spec.role}
    cfg.update(spec.extra_config)
    return cfg


def to_json(cfg: dict[str, Any]) -> str:
    """Compact, key-ordered JSON: identical text for identical configs (stable manifests)."""
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True)
