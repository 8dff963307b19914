"""Kubernetes objects for a `ModelService`, the same ones the reconciler applies.

Per spec: one engine workload per role group (a Deployment, or a LeaderWorkerSet when data
parallelism spans nodes), the EPP's Service and ConfigMap (EndpointPickerConfig), the
InferencePool (`inference.networking.k8s.io/v1`) and InferenceObjectives
(`inference.networking.x-k8s.io/v1alpha2`). Output is deterministic, so it can be committed as
a Kustomize base and compared with `render`'s output in CI.

Contract with the EPP base (deployed by Kustomize, not rendered here): the EPP Deployment of
pool P carries the label `app.kubernetes.io/name: P-epp`, mounts ConfigMap `P-epp-config` at
`/config` (file `epp-config.yaml`) and serves ext_proc on 9002, gRPC health on 9003 and metrics
on 9090.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from llmd_modelservice.accelerators import (
    GPU_LIKE,
    K8S_RESOURCE,
    SGLANG_IMAGE,
    SIM_IMAGE,
    VLLM_IMAGES,
    Accelerator,
)
from llmd_modelservice.engines import BUILDERS
from llmd_modelservice.planner import PlanError, cpu_kv_gib, engine_context
from llmd_modelservice.spec import ModelService, RoleGroupView

MANAGED_BY = "llmd-modelservice"
POOL_GROUP = "inference.networking.k8s.io"
POOL_VERSION = "v1"
OBJECTIVE_API = "inference.networking.x-k8s.io/v1alpha2"
EPP_CONFIG_API = "inference.networking.x-k8s.io/v1alpha1"
LWS_API = "leaderworkerset.x-k8s.io/v1"
EPP_CONFIG_FILE = "epp-config.yaml"
DP_RPC_PORT = 5555
SGLANG_DIST_PORT = 5000
DEFAULT_KVMANAGER = "tcp://kvmanager:5557"
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090


def _labels(ms: ModelService) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "llmd",
        "llm-d.ai/modelservice": ms.name,
    }


def _meta(ms: ModelService, name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {**_labels(ms), **(extra or {})}
    return {
        "name": name,
        "namespace": ms.metadata.namespace,
        "labels": dict(sorted(labels.items())),
    }


def pod_labels(ms: ModelService, group: RoleGroupView, serving: bool = True) -> dict[str, str]:
    """Labels the InferencePool selects on (`llm-d.ai/inferenceServing`, model) plus the role."""
    return {
        "app.kubernetes.io/name": ms.name,
        "app.kubernetes.io/component": "engine",
        "llm-d.ai/inferenceServing": "true" if serving else "false",
        "llm-d.ai/model": ms.name,
        "llm-d.ai/role": group.role,
    }


def workload_name(ms: ModelService, group: RoleGroupView) -> str:
    return f"{ms.name}-{group.key}" if group.key else ms.name


def resolve_render_accelerator(ms: ModelService, override: Accelerator | None) -> Accelerator:
    if ms.spec.engine.kind == "sim":
        return "cpu"
    if override is not None:
        want = ms.spec.hardware.accelerator
        if want not in ("any", override):
            raise PlanError(
                f"{ms.name}: --accelerator {override} conflicts with "
                f"spec.hardware.accelerator {want!r}"
            )
        return override
    want = ms.spec.hardware.accelerator
    return "nvidia" if want == "any" else want


def _image(ms: ModelService, accel: Accelerator) -> str:
    eng = ms.spec.engine
    if eng.image:
        return eng.image
    if eng.kind == "vllm":
        return VLLM_IMAGES[accel]
    if eng.kind == "sglang":
        return SGLANG_IMAGE
    return SIM_IMAGE


def _kvmanager_endpoint(ms: ModelService, override: str | None) -> ModelService:
    """Loopback KV-event endpoints mean 'the local kvmanager'; in a cluster that is a Service."""
    kv = ms.spec.kv_events
    if kv.mode != "connect":
        return ms
    loopback = any(h in kv.endpoint for h in ("127.0.0.1", "localhost", "[::1]"))
    if override is None and not loopback:
        return ms
    new_kv = kv.model_copy(update={"endpoint": override or DEFAULT_KVMANAGER})
    spec = ms.spec.model_copy(update={"kv_events": new_kv})
    return ms.model_copy(update={"spec": spec})


def _resources(ms: ModelService, group: RoleGroupView, accel: Accelerator) -> dict[str, Any]:
    res = group.resources
    limits: dict[str, str] = {}
    if res.cpu:
        limits["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = res.memory
    limits.update(res.extra)
    if accel in GPU_LIKE and ms.spec.engine.kind != "sim":
        limits[K8S_RESOURCE[accel]] = str(group.parallelism.devices_per_node)
    if not limits:
        return {}
    return {"limits": dict(sorted(limits.items())), "requests": dict(sorted(limits.items()))}


def _probe(ms: ModelService, port: int, *, period: float, failures: int) -> dict[str, Any]:
    h = ms.spec.health
    return {
        "httpGet": {"path": h.path, "port": port},
        "periodSeconds": max(1, round(period)),
        "timeoutSeconds": max(1, round(h.timeout_seconds)),
        "failureThreshold": failures,
    }


def _env_list(env: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
    out += [{"name": k, "value": v} for k, v in sorted(env.items())]
    return out


def _container(
    ms: ModelService,
    group: RoleGroupView,
    accel: Accelerator,
    *,
    multinode: str | None = None,
) -> dict[str, Any]:
    """The engine container. `multinode` is None, "leader" or "worker" (LeaderWorkerSet)."""
    s = ms.spec
    port = s.router.target_port
    # Requests for every DP rank enter through the leader, so workers publish KV events under
    # the leader's endpoint; they resolve its IP from LWS_LEADER_ADDRESS in the shell.
    advertise = {None: "$(POD_IP)", "leader": "${POD_IP}", "worker": "${LEADER_IP}"}[multinode]
    ctx = engine_context(
        ms,
        group,
        accelerator=accel,
        host="0.0.0.0",
        port=port,
        advertise=advertise,
        kv_bind_port=s.kv_events.bind_port,
        kv_replay_port=s.kv_events.replay_port,
        cpu_kv_gib=cpu_kv_gib(ms) if accel == "cpu" and s.engine.kind == "vllm" else None,
    )
    cmd = BUILDERS[s.engine.kind](ctx)
    argv = list(cmd.argv)
    if multinode is not None:
        argv += _multinode_args(ms, group, multinode)
    container: dict[str, Any] = {
        "name": s.engine.kind if s.engine.kind != "sim" else "llmd-sim",
        "image": _image(ms, accel),
        "imagePullPolicy": "IfNotPresent",
    }
    if multinode is not None:
        # Shell form: the worker's start rank is computed from LWS_WORKER_INDEX.
        prefix = ""
        if multinode == "worker":
            prefix = 'LEADER_IP=$(getent hosts "$LWS_LEADER_ADDRESS" | cut -d" " -f1); '
        container["command"] = ["/bin/sh", "-c", prefix + "exec " + _shell_join(argv)]
    else:
        container["command"] = argv[:1]
        container["args"] = argv[1:]
    container["env"] = _env_list(cmd.env)
    ports = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    if s.kv_events.enabled and s.kv_events.mode == "bind":
        ports.append({"name": "kv-events", "containerPort": s.kv_events.bind_port})
    if s.kv_events.enabled and s.kv_events.replay_port is not None:
        ports.append({"name": "kv-replay", "containerPort": s.kv_events.replay_port})
    if s.kv_transfer is not None:
        ports.append({"name": "nixl", "containerPort": s.kv_transfer.side_channel_port})
    if multinode != "worker":
        container["ports"] = ports
        h = s.health
        container["startupProbe"] = _probe(
            ms,
            port,
            period=10,
            failures=max(1, round(h.startup_timeout_seconds / 10)),
        )
        container["readinessProbe"] = _probe(ms, port, period=h.interval_seconds, failures=1)
        container["livenessProbe"] = _probe(
            ms, port, period=h.interval_seconds, failures=h.failure_threshold
        )
    resources = _resources(ms, group, accel)
    if resources:
        container["resources"] = resources
    if s.engine.kind != "sim":
        container["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm"}]
    return container


def _shell_join(argv: Sequence[str]) -> str:
    """shlex-quote every word except shell expansions we rely on (`${VAR}`, `$((..))`)."""
    out = []
    for a in argv:
        if a.startswith("${") or a.startswith("$(("):
            out.append(a)
        elif "${" in a:
            # JSON configs carrying ${POD_IP}: double quotes keep the expansion.
            out.append('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def _multinode_args(ms: ModelService, group: RoleGroupView, role: str) -> list[str]:
    par = group.parallelism
    kind = ms.spec.engine.kind
    if kind == "vllm":
        args = [
            "--data-parallel-size-local",
            str(par.ranks_per_node),
            "--data-parallel-address",
            "${LWS_LEADER_ADDRESS}",
            "--data-parallel-rpc-port",
            str(DP_RPC_PORT),
        ]
        if role == "worker":
            args = [
                "--headless",
                "--data-parallel-start-rank",
                f"$((LWS_WORKER_INDEX * {par.ranks_per_node}))",
                *args,
            ]
        return args
    if kind == "sglang":
        return [
            "--nnodes",
            str(par.nodes),
            "--node-rank",
            "${LWS_WORKER_INDEX}",
            "--dist-init-addr",
            f"${{LWS_LEADER_ADDRESS}}:{SGLANG_DIST_PORT}",
        ]
    raise PlanError(f"{ms.name}: engine kind {kind!r} cannot span nodes (parallelism.dataLocal)")


def _pod_spec(ms: ModelService, containers: list[dict[str, Any]]) -> dict[str, Any]:
    s = ms.spec
    pod: dict[str, Any] = {
        "containers": containers,
        "terminationGracePeriodSeconds": round(
            s.drain.grace_seconds + s.drain.stop_timeout_seconds
        ),
    }
    if s.hardware.node_selector:
        pod["nodeSelector"] = dict(sorted(s.hardware.node_selector.items()))
    if s.hardware.tolerations:
        pod["tolerations"] = s.hardware.tolerations
    if s.engine.kind != "sim":
        pod["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    return pod


def _deployment(ms: ModelService, group: RoleGroupView, accel: Accelerator) -> dict[str, Any]:
    labels = pod_labels(ms, group)
    selector = {k: labels[k] for k in ("llm-d.ai/model", "llm-d.ai/role")}
    spec: dict[str, Any] = {
        "replicas": group.replicas,
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {"labels": labels},
            "spec": _pod_spec(ms, [_container(ms, group, accel)]),
        },
    }
    if accel in GPU_LIKE and ms.spec.engine.kind != "sim":
        # Accelerators are scarce: replace pods one at a time instead of surging.
        spec["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ms, workload_name(ms, group)),
        "spec": spec,
    }


def _leader_worker_set(
    ms: ModelService, group: RoleGroupView, accel: Accelerator
) -> dict[str, Any]:
    par = group.parallelism
    leader = {
        "metadata": {"labels": pod_labels(ms, group, serving=True)},
        "spec": _pod_spec(ms, [_container(ms, group, accel, multinode="leader")]),
    }
    worker = {
        "metadata": {"labels": pod_labels(ms, group, serving=False)},
        "spec": _pod_spec(ms, [_container(ms, group, accel, multinode="worker")]),
    }
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(ms, workload_name(ms, group)),
        "spec": {
            "replicas": group.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": par.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def default_epp_config(ms: ModelService) -> dict[str, Any]:
    """An EndpointPickerConfig as llm-d-inference-scheduler reads it."""
    scorers = [
        {"pluginRef": "prefix-cache-scorer", "weight": 3},
        {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
        {"pluginRef": "queue-scorer", "weight": 2},
        {"pluginRef": "max-score-picker"},
    ]
    common = [
        {"type": "prefix-cache-scorer", "parameters": {"blockSize": ms.spec.engine.block_size}},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "queue-scorer"},
        {"type": "max-score-picker"},
    ]
    if ms.spec.prefill is None and ms.spec.role == "both":
        return {
            "apiVersion": EPP_CONFIG_API,
            "kind": "EndpointPickerConfig",
            "plugins": [{"type": "single-profile-handler"}, *common],
            "schedulingProfiles": [{"name": "default", "plugins": scorers}],
        }
    return {
        "apiVersion": EPP_CONFIG_API,
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "prefill-header-handler"},
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            *common,
            {"type": "pd-profile-handler"},
        ],
        "schedulingProfiles": [
            {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, *scorers]},
            {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, *scorers]},
        ],
    }


def epp_service_name(ms: ModelService) -> str:
    return ms.spec.router.epp.service_name or f"{ms.pool_name}-epp"


def _epp_objects(ms: ModelService) -> list[dict[str, Any]]:
    epp = ms.spec.router.epp
    name = epp_service_name(ms)
    config = epp.config if epp.config is not None else default_epp_config(ms)
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ms, f"{ms.pool_name}-epp-config"),
        "data": {EPP_CONFIG_FILE: text},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ms, name),
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [
                {
                    "name": "grpc-ext-proc",
                    "port": epp.port,
                    "protocol": "TCP",
                    "appProtocol": "http2",
                },
                {"name": "grpc-health", "port": EPP_HEALTH_PORT, "protocol": "TCP"},
                {"name": "http-metrics", "port": EPP_METRICS_PORT, "protocol": "TCP"},
            ],
            "type": "ClusterIP",
        },
    }
    return [configmap, service]


def _pool(ms: ModelService) -> dict[str, Any]:
    epp = ms.spec.router.epp
    return {
        "apiVersion": f"{POOL_GROUP}/{POOL_VERSION}",
        "kind": "InferencePool",
        "metadata": _meta(ms, ms.pool_name),
        "spec": {
            "selector": {
                "matchLabels": {"llm-d.ai/inferenceServing": "true", "llm-d.ai/model": ms.name}
            },
            "targetPorts": [{"number": ms.spec.router.target_port}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": epp_service_name(ms),
                "port": {"number": epp.port},
                "failureMode": epp.failure_mode,
            },
        },
    }


def _objectives(ms: ModelService) -> list[dict[str, Any]]:
    out = []
    for obj in ms.spec.router.objectives:
        spec: dict[str, Any] = {}
        if obj.priority is not None:
            spec["priority"] = obj.priority
        spec["poolRef"] = {"group": POOL_GROUP, "kind": "InferencePool", "name": ms.pool_name}
        out.append(
            {
                "apiVersion": OBJECTIVE_API,
                "kind": "InferenceObjective",
                "metadata": _meta(ms, obj.name),
                "spec": spec,
            }
        )
    return out


def render(
    ms: ModelService,
    *,
    accelerator: Accelerator | None = None,
    kvmanager_endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """All objects of one spec, in apply order."""
    accel = resolve_render_accelerator(ms, accelerator)
    ms = _kvmanager_endpoint(ms, kvmanager_endpoint)
    objects: list[dict[str, Any]] = []
    for group in ms.groups():
        if group.parallelism.nodes > 1:
            objects.append(_leader_worker_set(ms, group, accel))
        else:
            objects.append(_deployment(ms, group, accel))
    objects += _epp_objects(ms)
    objects.append(_pool(ms))
    objects += _objectives(ms)
    return objects


def to_yaml(objects: Sequence[dict[str, Any]]) -> str:
    return "".join(
        "---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False, width=100)
        for o in objects
    )


def file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_base(objects: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One file per object plus a `kustomization.yaml` listing them: a Kustomize base."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    names = []
    for obj in objects:
        name = file_name(obj)
        path = out_dir / name
        path.write_text(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100))
        written.append(path)
        names.append(name)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": names,
    }
    k = out_dir / "kustomization.yaml"
    k.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    written.append(k)
    return written
