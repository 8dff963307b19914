"""The local supervisor: every replica of every spec, scaled, restarted and stopped on request.

It turns specs into `ReplicaRunner`s, hands each its port, auxiliary ports (KV-event bind,
replay, NIXL side channel) and devices, and returns them when a replica goes away. Scaling down
removes replicas that are not serving first, then the highest index, and drains them.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
from llmd_sdk.hardware import HardwareProfile
from llmd_sdk.health import HealthState

from llmd_modelservice.accelerators import GPU_LIKE, Accelerator
from llmd_modelservice.allocators import DeviceAllocationError, DeviceAllocator, PortAllocator
from llmd_modelservice.metrics import SupervisorMetrics
from llmd_modelservice.planner import (
    PlanError,
    check_hardware,
    devices_per_replica,
    plan_replica,
    resolve_accelerator,
)
from llmd_modelservice.process import resolve_argv
from llmd_modelservice.registry import Registry
from llmd_modelservice.replica import ReplicaRunner, ReplicaState
from llmd_modelservice.spec import ModelService, RoleGroupView

log = structlog.get_logger("llmd_modelservice.supervisor")


class ScaleError(Exception):
    """A scale request that cannot be honoured (unknown model/role, not enough devices)."""


class NotFoundError(Exception):
    pass


@dataclass
class _Slot:
    runner: ReplicaRunner
    port: int
    aux_ports: list[int] = field(default_factory=list)
    devices: tuple[int, ...] = ()


@dataclass
class GroupRuntime:
    group: RoleGroupView
    desired: int
    slots: dict[int, _Slot] = field(default_factory=dict)


@dataclass
class ModelRuntime:
    ms: ModelService
    accelerator: Accelerator
    groups: dict[str, GroupRuntime]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    notes: list[str] = field(default_factory=list)


def preflight(ms: ModelService) -> None:
    """Fail fast, in one line, when the engine cannot be launched on this machine."""
    eng = ms.spec.engine
    if eng.command:
        try:
            resolve_argv(eng.command)
        except FileNotFoundError as exc:
            raise PlanError(f"{ms.name}: spec.engine.command: {exc}") from None
        return
    if eng.kind == "vllm":
        try:
            resolve_argv(["vllm"])
        except FileNotFoundError:
            has_module = importlib.util.find_spec("vllm") is not None
            hint = (
                "vLLM is importable but its `vllm` command is missing"
                if has_module
                else "vLLM is not installed here (pip install vllm)"
            )
            raise PlanError(
                f"{ms.name}: engine kind 'vllm' cannot start: {hint}; "
                "or set spec.engine.kind: sim, or spec.engine.command"
            ) from None
    elif eng.kind == "sglang":
        if importlib.util.find_spec("sglang") is None:
            raise PlanError(
                f"{ms.name}: engine kind 'sglang' cannot start: SGLang is not importable here "
                "(pip install sglang); `plan` and `render` still work"
            )
    elif eng.kind == "sim":
        try:
            resolve_argv(["llmd-sim"])
        except FileNotFoundError:
            raise PlanError(
                f"{ms.name}: engine kind 'sim' cannot start: the `llmd-sim` command is not "
                "installed (uv sync --all-packages), or set spec.engine.command"
            ) from None


class Supervisor:
    """Runs the replicas of `specs` on this node."""

    def __init__(
        self,
        specs: Sequence[ModelService],
        profile: HardwareProfile | None,
        *,
        log_dir: Path,
        registry: Registry | None = None,
        metrics: SupervisorMetrics | None = None,
        probe_ports: bool = True,
    ) -> None:
        self.specs = list(specs)
        self.profile = profile
        self.log_dir = log_dir
        self.metrics = metrics or SupervisorMetrics()
        self.registry = registry or Registry()
        self.registry.add_listener(lambda ev: self.metrics.endpoint_events.labels(ev.type).inc())
        self.ports = PortAllocator(probe=probe_ports)
        self.aux_ports = PortAllocator(probe=probe_ports)
        self.devices = DeviceAllocator(d.index for d in (profile.devices if profile else []))
        self.models: dict[str, ModelRuntime] = {}
        self.client = httpx.AsyncClient()
        self.health = HealthState()
        self.started = False
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Preflight and hardware/memory checks for every spec; raises `PlanError`."""
        notes: list[str] = []
        free = self.devices.free
        for ms in self.specs:
            preflight(ms)
            accel = resolve_accelerator(ms, self.profile)
            notes += check_hardware(ms, self.profile, free_devices=free)
            if accel in GPU_LIKE:
                free -= sum(devices_per_replica(g, accel) * g.replicas for g in ms.groups())
        return notes

    async def start(self) -> list[str]:
        notes = self.check()
        for ms in self.specs:
            accel = resolve_accelerator(ms, self.profile)
            rt = ModelRuntime(
                ms=ms,
                accelerator=accel,
                groups={g.key: GroupRuntime(g, g.replicas) for g in ms.groups()},
            )
            self.models[ms.name] = rt
            for gr in rt.groups.values():
                for i in range(gr.desired):
                    self._add(rt, gr, i)
        self.started = True
        self._refresh_gauges()
        for note in notes:
            log.info("plan", note=note)
        return notes

    async def shutdown(self, *, drain: bool = True) -> None:
        """Stop every replica (drained, in parallel) and close the HTTP client."""
        self._closing = True
        self.health.shutdown()
        runners = [
            s.runner
            for rt in self.models.values()
            for g in rt.groups.values()
            for s in g.slots.values()
        ]
        try:
            await asyncio.gather(*(r.stop(drain=drain) for r in runners), return_exceptions=True)
        finally:
            for r in runners:
                r.kill_now()
            await self.client.aclose()

    def kill_all_now(self) -> None:
        """Synchronous safety net: SIGKILL every engine process group."""
        for rt in self.models.values():
            for g in rt.groups.values():
                for s in g.slots.values():
                    s.runner.kill_now()

    # -- replicas -------------------------------------------------------------------------

    def _add(self, rt: ModelRuntime, gr: GroupRuntime, index: int) -> None:
        ms = rt.ms
        s = ms.spec
        n = devices_per_replica(gr.group, rt.accelerator)
        devices = self.devices.take(n) if n else ()
        host = s.local.host
        port = self.ports.take(s.local.base_port, host)
        aux: list[int] = []
        kv_bind = replay = nixl = None
        if s.kv_events.enabled and s.kv_events.mode == "bind":
            kv_bind = self.aux_ports.take(s.kv_events.bind_port, host)
            aux.append(kv_bind)
        if s.kv_events.enabled and s.kv_events.replay_port is not None:
            replay = self.aux_ports.take(s.kv_events.replay_port, host)
            aux.append(replay)
        if s.kv_transfer is not None:
            nixl = self.aux_ports.take(s.kv_transfer.side_channel_port, host)
            aux.append(nixl)
        plan = plan_replica(
            ms,
            gr.group,
            index,
            profile=self.profile,
            port=port,
            devices=devices,
            kv_bind_port=kv_bind,
            kv_replay_port=replay,
            nixl_port=nixl,
            slots=max(gr.desired, 1),
        )
        runner = ReplicaRunner(
            plan,
            health=s.health,
            restart=s.restart,
            drain=s.drain,
            registry=self.registry,
            metrics=self.metrics,
            client=self.client,
            log_dir=self.log_dir,
            labels={
                "llm-d.ai/model": ms.name,
                "llm-d.ai/role": gr.group.role,
                **ms.metadata.labels,
            },
            on_change=self._refresh_gauges,
        )
        gr.slots[index] = _Slot(runner, port, aux, devices)
        runner.start()

    async def _remove(self, gr: GroupRuntime, index: int) -> None:
        slot = gr.slots[index]
        try:
            await slot.runner.stop(drain=True)
        finally:
            gr.slots.pop(index, None)
            self.ports.release(slot.port)
            for p in slot.aux_ports:
                self.aux_ports.release(p)
            self.devices.release(slot.devices)
            self._refresh_gauges()

    def _runtime(self, model: str) -> ModelRuntime:
        rt = self.models.get(model)
        if rt is None:
            raise NotFoundError(f"no model {model!r} (have: {', '.join(sorted(self.models))})")
        return rt

    async def scale(self, model: str, replicas: int, role: str | None = None) -> dict[str, Any]:
        """Set the desired replicas of a model's group; returns after the change is applied
        (new replicas are started, removed ones are drained and gone)."""
        if replicas < 0:
            raise ScaleError("replicas must be >= 0")
        rt = self._runtime(model)
        key = self._group_key(rt, role)
        async with rt.lock:
            gr = rt.groups[key]
            current = sorted(gr.slots)
            if replicas > len(current):
                need = devices_per_replica(gr.group, rt.accelerator) * (replicas - len(current))
                if need > self.devices.free:
                    raise ScaleError(
                        f"{model}: scaling to {replicas} needs {need} more "
                        f"{rt.accelerator} device(s), {self.devices.free} free"
                    )
                free_indices = [i for i in range(replicas + len(current)) if i not in gr.slots]
                gr.desired = replicas
                try:
                    for i in free_indices[: replicas - len(current)]:
                        self._add(rt, gr, i)
                except DeviceAllocationError as exc:
                    raise ScaleError(f"{model}: {exc}") from None
            elif replicas < len(current):
                gr.desired = replicas
                victims = self._victims(gr, len(current) - replicas)
                log.info(
                    "scaling down",
                    model=model,
                    stopping=[gr.slots[i].runner.plan.replica_id for i in victims],
                )
                await asyncio.gather(*(self._remove(gr, i) for i in victims))
            gr.desired = replicas
            self._refresh_gauges()
            return self.model_status(model)

    @staticmethod
    def _victims(gr: GroupRuntime, count: int) -> list[int]:
        """Replicas that are not serving go first, then the highest indices."""
        ready = [i for i in gr.slots if gr.slots[i].runner.state == ReplicaState.READY]
        others = [i for i in gr.slots if i not in ready]
        return (sorted(others, reverse=True) + sorted(ready, reverse=True))[:count]

    async def restart_replica(self, model: str, replica_id: str) -> dict[str, Any]:
        rt = self._runtime(model)
        for gr in rt.groups.values():
            for slot in gr.slots.values():
                if slot.runner.plan.replica_id == replica_id:
                    if not slot.runner.request_restart():
                        raise ScaleError(f"{replica_id} is stopping")
                    return slot.runner.status()
        raise NotFoundError(f"no replica {replica_id!r} in model {model!r}")

    @staticmethod
    def _group_key(rt: ModelRuntime, role: str | None) -> str:
        if role is None:
            return next(iter(rt.groups))  # the main group
        for key, gr in rt.groups.items():
            if gr.group.role == role:
                return key
        have = ", ".join(g.group.role for g in rt.groups.values())
        raise ScaleError(f"{rt.ms.name}: no {role!r} group (has: {have})")

    # -- status ---------------------------------------------------------------------------

    def replicas(self, model: str | None = None) -> list[ReplicaRunner]:
        out: list[ReplicaRunner] = []
        for name, rt in self.models.items():
            if model is not None and name != model:
                continue
            for gr in rt.groups.values():
                out.extend(gr.slots[i].runner for i in sorted(gr.slots))
        return out

    def model_status(self, model: str) -> dict[str, Any]:
        rt = self._runtime(model)
        ms = rt.ms
        groups = []
        for gr in rt.groups.values():
            runners = [gr.slots[i].runner for i in sorted(gr.slots)]
            groups.append(
                {
                    "role": gr.group.role,
                    "desired": gr.desired,
                    "ready": sum(r.state == ReplicaState.READY for r in runners),
                    "replicas": [r.status() for r in runners],
                }
            )
        return {
            "name": ms.name,
            "namespace": ms.metadata.namespace,
            "engine": ms.spec.engine.kind,
            "model": ms.spec.model.name,
            "served_names": ms.served_names,
            "accelerator": rt.accelerator,
            "groups": groups,
        }

    def ready(self) -> bool:
        """Every group with desired replicas has at least one ready."""
        if not self.started or self._closing:
            return False
        for rt in self.models.values():
            for gr in rt.groups.values():
                if gr.desired and not any(
                    s.runner.state == ReplicaState.READY for s in gr.slots.values()
                ):
                    return False
        return True

    def _refresh_gauges(self) -> None:
        if not self._closing:
            self.health.set_ready(self.ready())
        g = self.metrics.replicas
        g.clear()
        for rt in self.models.values():
            for gr in rt.groups.values():
                self.metrics.desired.labels(rt.ms.name, gr.group.role).set(gr.desired)
                counts: dict[str, int] = {}
                for s in gr.slots.values():
                    counts[s.runner.state.value] = counts.get(s.runner.state.value, 0) + 1
                for state in ReplicaState:
                    g.labels(rt.ms.name, gr.group.role, state.value).set(counts.get(state.value, 0))
