"""`render`: the Kubernetes objects per spec, deterministic and buildable by Kustomize."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmd_modelservice.planner import PlanError
from llmd_modelservice.render import render, to_yaml, write_base
from llmd_modelservice.server import main
from llmd_modelservice.validation import load_specs

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "modelservice"


def _example(name: str) -> Any:
    (ms,) = load_specs([EXAMPLES / f"{name}.yaml"])
    return ms


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        out.setdefault(o["kind"], []).append(o)
    return out


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return c


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_sim_example_renders_pool_objectives_epp_and_deployment() -> None:
    objs = render(_example("sim-small"))
    kinds = [o["kind"] for o in objs]
    assert kinds == [
        "Deployment",
        "ConfigMap",
        "Service",
        "InferencePool",
        "InferenceObjective",
        "InferenceObjective",
    ]
    k = _by_kind(objs)
    dep = k["Deployment"][0]
    assert dep["metadata"]["name"] == "sim-small" and dep["spec"]["replicas"] == 3
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["llm-d.ai/inferenceServing"] == "true"
    assert pod_labels["llm-d.ai/model"] == "sim-small" and pod_labels["llm-d.ai/role"] == "both"
    c = _container(dep)
    assert c["image"] == "llmd-sim:latest" and c["command"] == ["llmd-sim"]
    args = c["args"]
    kv = json.loads(args[args.index("--kv-events-config") + 1])
    # A loopback kvmanager means "the cluster's kvmanager Service"; the topic uses the pod IP.
    assert kv["endpoint"] == "tcp://kvmanager:5557"
    assert kv["topic"] == "kv@$(POD_IP):8000@qwen3-0.6b"
    env = _env(c)
    assert c["env"][0]["name"] == "POD_IP", "POD_IP first so $(POD_IP) expands in later entries"
    assert env["PYTHONHASHSEED"] == "42"
    assert "resources" not in c and "volumes" not in dep["spec"]["template"]["spec"]

    pool = k["InferencePool"][0]
    assert pool == {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {
            "name": "sim-small",
            "namespace": "default",
            "labels": {
                "app.kubernetes.io/managed-by": "llmd-modelservice",
                "app.kubernetes.io/part-of": "llmd",
                "llm-d.ai/modelservice": "sim-small",
            },
        },
        "spec": {
            "selector": {
                "matchLabels": {"llm-d.ai/inferenceServing": "true", "llm-d.ai/model": "sim-small"}
            },
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": "sim-small-epp",
                "port": {"number": 9002},
                "failureMode": "FailClose",
            },
        },
    }
    # Every pod label the pool selects on is on the pods.
    for key, value in pool["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[key] == value
    objectives = k["InferenceObjective"]
    assert [o["apiVersion"] for o in objectives] == ["inference.networking.x-k8s.io/v1alpha2"] * 2
    assert objectives[0]["spec"] == {
        "priority": 10,
        "poolRef": {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": "sim-small",
        },
    }
    svc = k["Service"][0]
    assert svc["metadata"]["name"] == "sim-small-epp"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "sim-small-epp"}
    assert [p["port"] for p in svc["spec"]["ports"]] == [9002, 9003, 9090]
    cfg = yaml.safe_load(k["ConfigMap"][0]["data"]["epp-config.yaml"])
    assert cfg["kind"] == "EndpointPickerConfig"
    assert cfg["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    plugin_types = {p["type"] for p in cfg["plugins"]}
    for profile in cfg["schedulingProfiles"]:
        for ref in profile["plugins"]:
            assert ref["pluginRef"] in plugin_types, "every pluginRef names a declared plugin"


@pytest.mark.parametrize(
    ("accelerator", "image", "resource"),
    [
        ("nvidia", "vllm/vllm-openai:v0.33.0", "nvidia.com/gpu"),
        ("amd", "vllm/vllm-openai-rocm:v0.33.0", "amd.com/gpu"),
        ("intel-xpu", "vllm/vllm-openai-xpu:v0.33.0", "gpu.intel.com/i915"),
        ("tpu", "vllm/vllm-tpu:v0.33.0", "google.com/tpu"),
    ],
)
def test_vllm_deployment_per_accelerator(accelerator: str, image: str, resource: str) -> None:
    objs = render(_example("llama-8b"), accelerator=accelerator)  # type: ignore[arg-type]
    dep = _by_kind(objs)["Deployment"][0]
    c = _container(dep)
    assert c["image"] == image
    assert c["command"] == ["vllm"] and c["args"][:2] == [
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
    ]
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    assert c["resources"]["limits"][resource] == "1"
    assert c["resources"]["limits"]["memory"] == "64Gi"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    env = _env(c)
    visibility = {
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ZE_AFFINITY_MASK",
        "TPU_VISIBLE_CHIPS",
    }
    assert not visibility & set(env), "the device plugin picks devices in a pod"
    kv = json.loads(c["args"][c["args"].index("--kv-events-config") + 1])
    assert kv["endpoint"] == "tcp://kvmanager:5557"


def test_cpu_render_sets_kv_cache_space_and_no_accelerator() -> None:
    dep = _by_kind(render(_example("qwen-cpu")))["Deployment"][0]
    c = _container(dep)
    assert c["image"].startswith("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:")
    assert _env(c)["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "--gpu-memory-utilization" not in c["args"]
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}


def test_pd_example_renders_two_roles_with_nixl() -> None:
    k = _by_kind(render(_example("qwen-pd")))
    deps = {d["metadata"]["name"]: d for d in k["Deployment"]}
    assert sorted(deps) == ["qwen-pd-decode", "qwen-pd-prefill"]
    assert deps["qwen-pd-decode"]["spec"]["replicas"] == 1
    assert deps["qwen-pd-prefill"]["spec"]["replicas"] == 2
    for role, dep in (("decode", deps["qwen-pd-decode"]), ("prefill", deps["qwen-pd-prefill"])):
        assert dep["spec"]["selector"]["matchLabels"] == {
            "llm-d.ai/model": "qwen-pd",
            "llm-d.ai/role": role,
        }
        c = _container(dep)
        env = _env(c)
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "$(POD_IP)"
        assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
        transfer = json.loads(c["args"][c["args"].index("--kv-transfer-config") + 1])
        assert transfer == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        kv = json.loads(c["args"][c["args"].index("--kv-events-config") + 1])
        assert kv["endpoint"] == "tcp://*:5557", "bind mode: the kvmanager connects to pods"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 8000, "kv-events": 5557, "nixl": 5600}
    cfg = yaml.safe_load(k["ConfigMap"][0]["data"]["epp-config.yaml"])
    assert [p["name"] for p in cfg["schedulingProfiles"]] == ["prefill", "decode"]


def test_wide_ep_renders_a_leader_worker_set() -> None:
    (lws,) = _by_kind(render(_example("deepseek-wide-ep")))["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2 and tmpl["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]
    worker = tmpl["workerTemplate"]["spec"]["containers"][0]
    lcmd, wcmd = leader["command"][2], worker["command"][2]
    assert leader["command"][:2] == ["/bin/sh", "-c"] and lcmd.startswith("exec vllm serve ")
    for cmd in (lcmd, wcmd):
        assert "--data-parallel-size 16" in cmd and "--data-parallel-size-local 8" in cmd
        assert "--data-parallel-address ${LWS_LEADER_ADDRESS}" in cmd
        assert "--enable-expert-parallel" in cmd
    assert "--headless" not in lcmd
    assert "--headless --data-parallel-start-rank $((LWS_WORKER_INDEX * 8))" in wcmd
    assert '"topic\\":\\"kv@${POD_IP}:8000@deepseek-r1' in lcmd
    assert wcmd.startswith('LEADER_IP=$(getent hosts "$LWS_LEADER_ADDRESS"')
    assert '"topic\\":\\"kv@${LEADER_IP}:8000@deepseek-r1' in wcmd
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    leader_labels = tmpl["leaderTemplate"]["metadata"]["labels"]
    worker_labels = tmpl["workerTemplate"]["metadata"]["labels"]
    assert leader_labels["llm-d.ai/inferenceServing"] == "true"
    assert worker_labels["llm-d.ai/inferenceServing"] == "false", "only leaders serve HTTP"


@pytest.mark.integration
def test_worker_shell_command_expands_as_intended(tmp_path: Path) -> None:
    """Run the rendered worker command through a real shell with `vllm` stubbed."""
    (lws,) = _by_kind(render(_example("deepseek-wide-ep")))["LeaderWorkerSet"]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    stub = tmp_path / "vllm"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(0o755)
    hosts = tmp_path / "getent"
    hosts.write_text('#!/bin/sh\necho "10.0.0.7 $2"\n')
    hosts.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "LWS_LEADER_ADDRESS": "ds-0.ds",
        "LWS_WORKER_INDEX": "1",
        "POD_IP": "10.0.0.9",
    }
    out = subprocess.run(worker["command"], env=env, capture_output=True, text=True, check=True)
    argv = out.stdout.splitlines()
    assert argv[argv.index("--data-parallel-start-rank") + 1] == "8"
    assert argv[argv.index("--data-parallel-address") + 1] == "ds-0.ds"
    kv = json.loads(argv[argv.index("--kv-events-config") + 1])
    assert kv["topic"] == "kv@10.0.0.7:8000@deepseek-r1"


def test_accelerator_override_conflicting_with_the_spec_is_refused() -> None:
    with pytest.raises(PlanError, match=r"conflicts with spec\.hardware\.accelerator 'nvidia'"):
        render(_example("qwen-pd"), accelerator="amd")


@pytest.mark.integration
def test_render_is_deterministic_and_builds_with_kustomize(tmp_path: Path) -> None:
    specs = load_specs(sorted(EXAMPLES.glob("*.yaml")))
    for ms in specs:
        assert to_yaml(render(ms)) == to_yaml(render(ms))
    ms = _example("qwen-pd")
    objects = render(ms)
    files = write_base(objects, tmp_path / "base")
    assert files[-1].name == "kustomization.yaml"
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot run `kubectl kustomize`")
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "base")], capture_output=True, text=True, check=True
    ).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(built, key=key) == sorted(objects, key=key)


def test_render_cli_stdout_and_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(EXAMPLES / "sim-small.yaml")
    assert main(["render", spec]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == render(_example("sim-small"))
    assert main(["render", spec, "--out-dir", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "kustomization.yaml" in names and "inferencepool-sim-small.yaml" in names
    assert main(["render", spec, "--kvmanager", "tcp://kv.llmd:5557"]) == 0
    assert "tcp://kv.llmd:5557" in capsys.readouterr().out
