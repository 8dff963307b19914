"""What an engine builder needs to know about one replica, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmd_modelservice.accelerators import Accelerator
from llmd_modelservice.spec import ModelService, RoleGroupView


@dataclass(frozen=True)
class ReplicaContext:
    """One replica's placement. `advertise` is the address others reach it at (topic, NIXL):
    a loopback IP locally, `$(POD_IP)` in a pod (Kubernetes expands it in args and env)."""

    ms: ModelService
    group: RoleGroupView
    accelerator: Accelerator
    host: str
    port: int
    advertise: str
    devices: tuple[int, ...] = ()
    device_architecture: str | None = None
    kv_events: dict[str, Any] | None = None
    kv_transfer: dict[str, Any] | None = None
    nixl_port: int | None = None
    cpu_bind: str | None = None
    cpu_kv_gib: int | None = None
    # Multi-node data parallel (LeaderWorkerSet): extra args per pod are added by `render`.
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineCommand:
    argv: list[str]
    env: dict[str, str]
