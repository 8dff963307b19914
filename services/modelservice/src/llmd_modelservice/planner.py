"""From a spec and a `HardwareProfile` to the exact engine command of every replica.

Pure: no processes, no sockets. The supervisor hands in the ports and devices it allocated;
`plan_specs` does the same allocation sequentially for `llmd-modelservice plan`.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmd_sdk.hardware import HardwareProfile

from llmd_modelservice.accelerators import GPU_LIKE, Accelerator, cpu_bind_ranges
from llmd_modelservice.engines import BUILDERS, ReplicaContext
from llmd_modelservice.kvconfig import kv_events_config, kv_topic, kv_transfer_config
from llmd_modelservice.memory import GIB, FitReport, check_device_fit, kv_budget_per_device
from llmd_modelservice.spec import ModelService, RoleGroupView

METRICS_PATH = "/metrics"


class PlanError(Exception):
    """The spec cannot run on this hardware; the message is one readable line."""


@dataclass(frozen=True)
class ReplicaPlan:
    """Everything needed to start, probe and advertise one replica."""

    model: str
    namespace: str
    replica_id: str
    role: str
    group_key: str
    index: int
    engine: str
    argv: tuple[str, ...]
    env: dict[str, str]
    host: str
    address: str
    port: int
    accelerator: Accelerator
    devices: tuple[int, ...]
    served_names: tuple[str, ...]
    loras: tuple[str, ...]
    kv_topic: str | None
    kv_events_endpoint: str | None
    health_path: str
    metrics_path: str
    hash_algo: str
    hash_seed: str
    block_size: int
    notes: tuple[str, ...] = field(default=())

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def command_line(self) -> str:
        """The replica as one shell line: planned env assignments, then argv."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = shlex.join(self.argv)
        return f"{env} {cmd}" if env else cmd


def resolve_accelerator(ms: ModelService, profile: HardwareProfile | None) -> Accelerator:
    """The accelerator this spec's replicas use on this node (sim needs none)."""
    if ms.spec.engine.kind == "sim":
        return "cpu"
    want = ms.spec.hardware.accelerator
    have: Accelerator = profile.accelerator if profile is not None else "cpu"
    if want == "any":
        return have
    if want == "cpu":
        return "cpu"
    if want != have:
        where = f"node {profile.hostname!r}" if profile else "this node"
        found = _describe_devices(profile) if profile else "no hardware profile"
        raise PlanError(
            f"{ms.name}: spec.hardware.accelerator wants {want!r} but {where} has {have!r} "
            f"({found})"
        )
    return want


def _describe_devices(profile: HardwareProfile) -> str:
    if not profile.devices:
        return f"CPU only: {profile.cpu.model_name}"
    names = sorted({d.name for d in profile.devices})
    return f"{len(profile.devices)} x {', '.join(names)}"


def devices_per_replica(group: RoleGroupView, accel: Accelerator) -> int:
    return group.parallelism.devices_per_node if accel in GPU_LIKE else 0


def replica_id(ms: ModelService, group: RoleGroupView, index: int) -> str:
    return f"{ms.name}-{group.key}-{index}" if group.key else f"{ms.name}-{index}"


def memory_reports(
    ms: ModelService, profile: HardwareProfile | None, accel: Accelerator
) -> list[FitReport]:
    """One report per group (None-free); raises nothing, callers decide."""
    if ms.spec.engine.kind == "sim" or profile is None:
        return []
    out: list[FitReport] = []
    for group in ms.groups():
        tensor = group.parallelism.tensor
        if accel in GPU_LIKE:
            devices = [d for d in profile.devices if d.memory_total_bytes]
            if not devices:
                continue
            smallest = min(devices, key=lambda d: d.memory_total_bytes or 0)
            report = check_device_fit(
                ms.spec,
                model_name=ms.name,
                tensor=tensor,
                device_bytes=smallest.memory_total_bytes or 0,
                device_label=f"{accel} {smallest.name}",
                utilization=ms.spec.engine.gpu_memory_utilization,
            )
        else:
            # CPU: every replica's weights and KV share host memory.
            replicas = max(1, group.replicas)
            report = check_device_fit(
                ms.spec,
                model_name=ms.name,
                tensor=1,
                device_bytes=profile.cpu.memory_total_bytes // replicas,
                device_label=f"host memory / {replicas} replica(s)",
                utilization=ms.spec.engine.gpu_memory_utilization,
            )
        if report is not None:
            out.append(report)
    return out


def check_hardware(
    ms: ModelService,
    profile: HardwareProfile | None,
    *,
    free_devices: int | None = None,
) -> list[str]:
    """Raise `PlanError` when the spec cannot run here; return notes (e.g. skipped checks)."""
    notes: list[str] = []
    accel = resolve_accelerator(ms, profile)
    for group in ms.groups():
        par = group.parallelism
        if par.nodes > 1:
            raise PlanError(
                f"{ms.name}: data parallel {par.data} with dataLocal {par.ranks_per_node} needs "
                f"{par.nodes} nodes; local mode runs one node (use `render` for Kubernetes)"
            )
    if accel in GPU_LIKE and profile is not None:
        need = sum(devices_per_replica(g, accel) * g.replicas for g in ms.groups())
        have = len(profile.devices) if free_devices is None else free_devices
        if need > have:
            parts = " + ".join(
                f"{g.replicas} x {devices_per_replica(g, accel)} "
                f"(TP {g.parallelism.tensor} x DP {g.parallelism.ranks_per_node})"
                for g in ms.groups()
            )
            raise PlanError(
                f"{ms.name}: needs {parts} = {need} {accel} device(s), {have} free on "
                f"{profile.hostname!r} ({_describe_devices(profile)})"
            )
    reports = memory_reports(ms, profile, accel)
    for report in reports:
        if not report.fits:
            raise PlanError(f"{ms.name}: {report.line}")
        notes.append(report.line)
    if ms.spec.engine.kind != "sim" and ms.spec.model.parameter_count is None:
        notes.append(f"{ms.name}: memory check skipped (spec.model.parameters not set)")
    return notes


def cpu_kv_gib(ms: ModelService) -> int | None:
    kv = kv_budget_per_device(ms.spec, 1)
    return None if kv is None else max(1, math.ceil(kv[0] / GIB))


def engine_context(
    ms: ModelService,
    group: RoleGroupView,
    *,
    accelerator: Accelerator,
    host: str,
    port: int,
    advertise: str,
    devices: Sequence[int] = (),
    device_architecture: str | None = None,
    kv_bind_port: int | None = None,
    kv_replay_port: int | None = None,
    nixl_port: int | None = None,
    cpu_bind: str | None = None,
    cpu_kv_gib: int | None = None,
) -> ReplicaContext:
    """The builder input for one replica; shared by local plans and Kubernetes `render`."""
    s = ms.spec
    kv_events = None
    if s.kv_events.enabled:
        kv_events = kv_events_config(
            s.kv_events,
            topic=kv_topic(advertise, port, ms.served_names[0]),
            bind_port=kv_bind_port if kv_bind_port is not None else s.kv_events.bind_port,
            replay_port=kv_replay_port,
        )
    kv_transfer = None
    if s.kv_transfer is not None:
        kv_transfer = kv_transfer_config(s.kv_transfer)
        if nixl_port is None:
            nixl_port = s.kv_transfer.side_channel_port
    return ReplicaContext(
        ms=ms,
        group=group,
        accelerator=accelerator,
        host=host,
        port=port,
        advertise=advertise,
        devices=tuple(devices),
        device_architecture=device_architecture,
        kv_events=kv_events,
        kv_transfer=kv_transfer,
        nixl_port=nixl_port if kv_transfer is not None else None,
        cpu_bind=cpu_bind,
        cpu_kv_gib=cpu_kv_gib,
    )


def plan_replica(
    ms: ModelService,
    group: RoleGroupView,
    index: int,
    *,
    profile: HardwareProfile | None,
    port: int,
    devices: Sequence[int] = (),
    kv_bind_port: int | None = None,
    kv_replay_port: int | None = None,
    nixl_port: int | None = None,
    slots: int | None = None,
) -> ReplicaPlan:
    """The command of replica `index` of `group`, on `port` and `devices`."""
    s = ms.spec
    accel = resolve_accelerator(ms, profile)
    host = s.local.host
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    bind_port = kv_bind_port if kv_bind_port is not None else s.kv_events.bind_port
    kv_endpoint = None
    if s.kv_events.enabled and s.kv_events.mode == "bind":
        kv_endpoint = f"tcp://{address}:{bind_port}"
    arch = None
    if profile is not None and devices:
        by_index = {d.index: d for d in profile.devices}
        first = by_index.get(devices[0])
        arch = first.architecture if first else None
    cpu_bind = None
    kv_gib = None
    if accel == "cpu" and s.engine.kind == "vllm":
        kv_gib = cpu_kv_gib(ms)
        if profile is not None:
            cpu_bind = cpu_bind_ranges(
                profile.cpu.physical_cores,
                slots or max(1, group.replicas),
                index,
                group.parallelism.tensor,
            )
    ctx = engine_context(
        ms,
        group,
        accelerator=accel,
        host=host,
        port=port,
        advertise=address,
        devices=devices,
        device_architecture=arch,
        kv_bind_port=bind_port,
        kv_replay_port=kv_replay_port,
        nixl_port=nixl_port,
        cpu_bind=cpu_bind,
        cpu_kv_gib=kv_gib,
    )
    cmd = BUILDERS[s.engine.kind](ctx)
    return ReplicaPlan(
        model=ms.name,
        namespace=ms.metadata.namespace,
        replica_id=replica_id(ms, group, index),
        role=group.role,
        group_key=group.key,
        index=index,
        engine=s.engine.kind,
        argv=tuple(cmd.argv),
        env=cmd.env,
        host=host,
        address=address,
        port=port,
        accelerator=accel,
        devices=tuple(devices),
        served_names=tuple(ms.served_names),
        loras=tuple(lo.name for lo in s.loras),
        kv_topic=ctx.kv_events["topic"] if ctx.kv_events is not None else None,
        kv_events_endpoint=kv_endpoint,
        health_path=s.health.path,
        metrics_path=METRICS_PATH,
        hash_algo=s.engine.prefix_caching_hash_algo,
        hash_seed=s.engine.python_hash_seed,
        block_size=s.engine.block_size,
    )


@dataclass
class SequentialPorts:
    """Port bookkeeping for `plan` (no sockets): first unused port at or above a base."""

    used: set[int] = field(default_factory=set)

    def take(self, base: int) -> int:
        port = base
        while port in self.used:
            port += 1
        self.used.add(port)
        return port


def plan_specs(
    specs: Sequence[ModelService], profile: HardwareProfile | None
) -> tuple[list[ReplicaPlan], list[str]]:
    """Plan every replica of every spec as `serve` would start them; returns (plans, notes)."""
    plans: list[ReplicaPlan] = []
    notes: list[str] = []
    ports = SequentialPorts()
    aux = SequentialPorts()
    next_device = 0
    for ms in specs:
        accel = resolve_accelerator(ms, profile)
        free = None
        if profile is not None and accel in GPU_LIKE:
            free = len(profile.devices) - next_device
        notes += check_hardware(ms, profile, free_devices=free)
        s = ms.spec
        for group in ms.groups():
            for i in range(group.replicas):
                n = devices_per_replica(group, accel)
                devices = []
                if n and profile is not None:
                    devices = [d.index for d in profile.devices[next_device : next_device + n]]
                    next_device += n
                port = ports.take(s.local.base_port or 8200)
                kv_bind = aux.take(s.kv_events.bind_port) if s.kv_events.mode == "bind" else None
                replay = aux.take(s.kv_events.replay_port) if s.kv_events.replay_port else None
                nixl = aux.take(s.kv_transfer.side_channel_port) if s.kv_transfer else None
                plans.append(
                    plan_replica(
                        ms,
                        group,
                        i,
                        profile=profile,
                        port=port,
                        devices=devices,
                        kv_bind_port=kv_bind,
                        kv_replay_port=replay,
                        nixl_port=nixl,
                    )
                )
    return plans, notes


__all__ = [
    "PlanError",
    "ReplicaPlan",
    "check_hardware",
    "plan_replica",
    "plan_specs",
    "replica_id",
    "resolve_accelerator",
]
