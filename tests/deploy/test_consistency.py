"""The rendered objects fit together: selectors select pods, ports exist, references resolve.

What the API server would accept but the cluster would not run: a Service whose selector matches no
pod or whose targetPort no container opens, a pod mounting a ConfigMap that is not deployed, an
InferencePool pointing at a port the EPP Service does not have, a RoleBinding to a missing account.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from deploy_tree import Obj, PodTemplate, Render, render_with_components

# Our own services run with the restricted pod security profile; engines (upstream vLLM images,
# which run as root) get what vLLM allows: see test_engine_pods_are_hardened.
OUR_SERVICES = {"llmd-epp", "llmd-bbr", "llmd-kvmanager", "llmd-modelservice", "llmd-expert-router"}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def match_labels(obj: Obj, *path: str) -> dict[str, str]:
    node: Any = obj
    for p in path:
        node = node.get(p, {})
    return dict(node)


def container_ports(template: PodTemplate) -> dict[str | int, int]:
    """Port name -> number and number -> number, over every container of the pod."""
    out: dict[str | int, int] = {}
    for c in template.containers():
        for p in c.get("ports", []):
            out[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                out[p["name"]] = p["containerPort"]
    return out


def test_workload_selectors_match_their_templates(rendered: Render) -> None:
    for t in rendered.pod_templates():
        if t.owner["kind"] == "Deployment":
            sel = match_labels(t.owner, "spec", "selector", "matchLabels")
            assert selects(sel, t.labels), f"{t.where}: selector {sel} vs labels {t.labels}"


def test_services_select_pods_and_target_their_ports(rendered: Render) -> None:
    templates = rendered.pod_templates()
    for svc in rendered.of_kind("Service"):
        name = svc["metadata"]["name"]
        sel = svc["spec"].get("selector", {})
        backing = [t for t in templates if selects(sel, t.labels)]
        assert backing, f"Service/{name}: selector {sel} matches no pod template"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for t in backing:
                assert target in container_ports(t), (
                    f"Service/{name} port {port.get('name', port['port'])}: targetPort {target!r} "
                    f"is not a container port of {t.where}"
                )


def test_disruption_budgets_cover_every_workload_and_never_block_drains(rendered: Render) -> None:
    pdbs = rendered.of_kind("PodDisruptionBudget")
    for t in rendered.pod_templates():
        if t.replicas == 0:
            continue
        covering = [
            p for p in pdbs if selects(match_labels(p, "spec", "selector", "matchLabels"), t.labels)
        ]
        assert covering, f"{t.where}: no PodDisruptionBudget selects its pods"
        for p in covering:
            spec = p["spec"]
            if "minAvailable" in spec:
                assert int(spec["minAvailable"]) < t.replicas, (
                    f"PodDisruptionBudget/{p['metadata']['name']}: minAvailable "
                    f"{spec['minAvailable']} with {t.replicas} replica(s) of {t.where} blocks drains"
                )
            else:
                assert int(spec["maxUnavailable"]) >= 1


def test_referenced_configmaps_secrets_and_accounts_exist(rendered: Render) -> None:
    missing = []
    for t in rendered.pod_templates():
        spec = t.spec
        sa = spec.get("serviceAccountName")
        if sa and rendered.get("ServiceAccount", sa) is None:
            missing.append(f"{t.where}: ServiceAccount {sa}")
        for vol in spec.get("volumes", []):
            for kind, field, name_key in (
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
            ):
                ref = vol.get(field)
                if ref and not ref.get("optional") and rendered.get(kind, ref[name_key]) is None:
                    missing.append(f"{t.where}: volume {vol['name']} needs {kind} {ref[name_key]}")
        mounted = {v["name"] for v in spec.get("volumes", [])}
        for c in t.containers():
            for m in c.get("volumeMounts", []):
                if m["name"] not in mounted:
                    missing.append(f"{t.where}/{c['name']}: mounts undeclared volume {m['name']}")
            for env in c.get("env", []):
                src = env.get("valueFrom", {})
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = src.get(field)
                    if ref and not ref.get("optional") and rendered.get(kind, ref["name"]) is None:
                        missing.append(
                            f"{t.where}/{c['name']}: env {env['name']} needs {kind} {ref['name']}"
                        )
            for env_from in c.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = env_from.get(field)
                    if ref and not ref.get("optional") and rendered.get(kind, ref["name"]) is None:
                        missing.append(f"{t.where}/{c['name']}: envFrom needs {kind} {ref['name']}")
    assert not missing, "\n".join(missing)


def test_rbac_bindings_resolve(rendered: Render) -> None:
    for rb in rendered.of_kind("RoleBinding"):
        ref = rb["roleRef"]
        assert rendered.get(ref["kind"], ref["name"]) is not None, (
            f"RoleBinding/{rb['metadata']['name']}: no {ref}"
        )
        for s in rb["subjects"]:
            if s["kind"] == "ServiceAccount":
                assert s.get("namespace") == rb["metadata"]["namespace"], s
                assert rendered.get("ServiceAccount", s["name"]) is not None, s


def test_epp_can_read_its_pool_and_pods(rendered: Render) -> None:
    role = rendered.get("Role", "llmd-epp")
    assert role is not None
    granted = {
        (group, res)
        for rule in role["rules"]
        if {"get", "list", "watch"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for res in rule["resources"]
    }
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= granted


def test_modelservice_may_manage_what_it_renders(rendered: Render) -> None:
    role = rendered.get("Role", "llmd-modelservice")
    assert role is not None
    writable = {
        (group, res)
        for rule in role["rules"]
        if {"create", "patch", "delete", "list"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for res in rule["resources"]
    }
    for o in rendered.engine_workloads():
        group = o["apiVersion"].rpartition("/")[0]
        plural = o["kind"].lower() + "s"
        assert (group, plural) in writable, f"modelservice cannot manage {o['kind']}"
    assert {
        ("", "services"),
        ("", "configmaps"),
        ("inference.networking.k8s.io", "inferencepools"),
    } <= writable


def _args(container: Obj) -> list[str]:
    """The container's argv; a `sh -c` script is split the way the shell would split it."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"]) and len(argv) == 3:
        return shlex.split(argv[2])
    return argv


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def test_request_path_is_wired(rendered: Render) -> None:
    """Gateway -> HTTPRoute -> InferencePool -> EPP Service -> EPP pods, and BBR in the filter."""
    route = rendered.need("HTTPRoute", "llmd")
    gateway_names = {g["metadata"]["name"] for g in rendered.of_kind("Gateway")}
    assert {p["name"] for p in route["spec"]["parentRefs"]} <= gateway_names
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert refs and all(
        b["group"] == "inference.networking.k8s.io" and b["kind"] == "InferencePool" for b in refs
    )
    for b in refs:
        pool = rendered.get("InferencePool", b["name"])
        assert pool is not None, f"HTTPRoute backend {b['name']} is not deployed"
        epp_ref = pool["spec"]["endpointPickerRef"]
        svc = rendered.get("Service", epp_ref["name"])
        assert svc is not None, f"InferencePool {b['name']}: no Service {epp_ref['name']}"
        assert epp_ref["port"]["number"] in {p["port"] for p in svc["spec"]["ports"]}
        # The EPP watches this very pool.
        epp_pods = [
            t for t in rendered.pod_templates() if selects(svc["spec"]["selector"], t.labels)
        ]
        for t in epp_pods:
            args = _args(next(iter(t.containers())))
            assert _flag(args, "--pool-name") == b["name"], f"{t.where} watches another pool"
        # The pool selects the serving engines, and only them; they open the target port.
        sel = pool["spec"]["selector"]["matchLabels"]
        serving = [t for t in rendered.pod_templates() if selects(sel, t.labels)]
        assert serving, f"InferencePool {b['name']} selects no pod"
        for t in serving:
            assert t.labels.get("app.kubernetes.io/component") == "engine", t.where
            for port in pool["spec"]["targetPorts"]:
                assert port["number"] in container_ports(t), f"{t.where}: no port {port['number']}"


def test_bbr_envoyfilter_calls_the_bbr_service(rendered: Render) -> None:
    ef = rendered.need("EnvoyFilter", "llmd-bbr")
    (patch,) = ef["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["match"]["context"] == "GATEWAY"
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["@type"].endswith("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")
    mode = typed["processing_mode"]
    assert mode["request_body_mode"] in {"BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED"}
    if mode["request_body_mode"] == "FULL_DUPLEX_STREAMED":
        # Envoy rejects full-duplex streaming without trailers sent.
        assert mode["request_trailer_mode"] == "SEND"
    m = re.fullmatch(
        r"outbound\|(\d+)\|\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local",
        typed["grpc_service"]["envoy_grpc"]["cluster_name"],
    )
    assert m, typed["grpc_service"]
    port, svc_name, namespace = int(m.group(1)), m.group(2), m.group(3)
    svc = rendered.get("Service", svc_name)
    assert svc is not None and svc["metadata"]["namespace"] == namespace
    assert port in {p["port"] for p in svc["spec"]["ports"]}
    gateway = ef["spec"]["workloadSelector"]["labels"]["gateway.networking.k8s.io/gateway-name"]
    assert rendered.get("Gateway", gateway) is not None


def test_engines_publish_kv_events_to_the_kvmanager(rendered: Render) -> None:
    svc = rendered.need("Service", "llmd-kvmanager")
    zmq_port = next(p["port"] for p in svc["spec"]["ports"] if p["targetPort"] == "zmq-kv-events")
    for t in rendered.pod_templates():
        if t.labels.get("app.kubernetes.io/component") != "engine":
            continue
        (c,) = t.spec["containers"]
        raw = _flag(_args(c), "--kv-events-config")
        assert raw, f"{t.where}: no --kv-events-config"
        cfg = json.loads(raw)
        assert cfg["enable_kv_cache_events"] is True and cfg["publisher"] == "zmq", cfg
        assert cfg["endpoint"] == f"tcp://llmd-kvmanager:{zmq_port}", cfg
        # kv@<the address the EPP routes to>@<served model>: the pod's IP (a worker of a
        # wide-EP group publishes under its leader's) and the pool's target port.
        m = re.fullmatch(r"kv@(\$\(POD_IP\)|\$\{POD_IP\}|\$\{LEADER_IP\}):(\d+)@(.+)", cfg["topic"])
        assert m, cfg["topic"]
        assert int(m.group(2)) == 8000, cfg["topic"]
        assert m.group(3) == _flag(_args(c), "--served-model-name"), cfg["topic"]


def test_our_pods_run_restricted(rendered: Render) -> None:
    """Pod Security 'restricted': non-root, no privilege escalation, all capabilities dropped,
    RuntimeDefault seccomp; plus a read-only root filesystem and requests on every container."""
    for t in rendered.pod_templates():
        name = t.owner["metadata"]["name"]
        is_sim = t.labels.get("app.kubernetes.io/component") == "engine" and any(
            "llmd-sim" in c["image"] for c in t.containers()
        )
        if name not in OUR_SERVICES and not is_sim:
            continue
        pod = t.spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, t.where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", t.where
        for c in t.containers():
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{t.where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{t.where}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{t.where}/{c['name']}"
            assert "add" not in sc.get("capabilities", {}), f"{t.where}/{c['name']}"
            req = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(req), f"{t.where}/{c['name']}: requests {req}"


def test_engine_pods_are_hardened(rendered: Render, overlay: str) -> None:
    for t in rendered.pod_templates():
        if t.labels.get("app.kubernetes.io/component") != "engine":
            continue
        seccomp = t.spec.get("securityContext", {}).get("seccompProfile", {}).get("type")
        # vLLM's CPU backend needs NUMA syscalls that RuntimeDefault refuses (see cpu-engine.yaml).
        assert seccomp == (
            "Unconfined" if overlay == "cpu/inference-scheduling" else "RuntimeDefault"
        ), t.where
        for c in t.containers():
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, t.where
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("PYTHONHASHSEED", {}).get("value"), (
                f"{t.where}: block hashes need a fixed seed"
            )


def test_services_and_engines_agree_on_the_hash_seed(rendered: Render) -> None:
    """Prefix-cache block hashes depend on PYTHONHASHSEED: the engines, the kvmanager and the EPP
    must share it, or precise prefix scores never match."""
    seeds = {}
    for t in rendered.pod_templates():
        for c in t.containers():
            for e in c.get("env", []):
                if e["name"] == "PYTHONHASHSEED":
                    seeds[t.where] = e["value"]
    assert len(set(seeds.values())) == 1, seeds
    assert {"Deployment/llmd-kvmanager", "Deployment/llmd-epp"} <= set(seeds)


def test_probes_use_the_real_health_endpoints(rendered: Render) -> None:
    for t in rendered.pod_templates():
        name = t.owner["metadata"]["name"]
        for c in t.containers():
            if not c.get("ports"):
                continue  # headless wide-EP workers serve nothing
            ready, live = c.get("readinessProbe"), c.get("livenessProbe")
            assert ready and live, f"{t.where}/{c['name']}: readiness and liveness probes"
            if name in {"llmd-epp", "llmd-bbr"}:
                assert ready["grpc"]["service"] == "readiness", t.where
                assert live["grpc"]["service"] == "liveness", t.where
                assert ready["grpc"]["port"] == container_ports(t)["grpc-health"]
            elif name in {"llmd-kvmanager", "llmd-expert-router", "llmd-modelservice"}:
                assert (ready["httpGet"]["path"], live["httpGet"]["path"]) == (
                    "/readyz",
                    "/healthz",
                )
            elif t.labels.get("app.kubernetes.io/component") == "engine":
                assert ready["httpGet"]["path"] == "/health" == live["httpGet"]["path"]
                assert "startupProbe" in c, f"{t.where}: model loading needs a startup probe"


def test_monitors_select_something(overlay: str, tmp_path: Path) -> None:
    r = render_with_components(overlay, ["monitoring"], tmp_path)
    pod = next(o for o in r.objects if o["kind"] == "PodMonitor")
    engines = [
        t for t in r.pod_templates() if selects(pod["spec"]["selector"]["matchLabels"], t.labels)
    ]
    assert engines
    for t in engines:
        for ep in pod["spec"]["podMetricsEndpoints"]:
            if t.labels.get("llm-d.ai/inferenceServing") == "true":
                assert ep["port"] in container_ports(t), t.where
    for sm in r.of_kind("ServiceMonitor"):
        svc = r.get("Service", sm["metadata"]["name"])
        if svc is None:
            assert sm["metadata"]["name"] == "llmd-expert-router", sm["metadata"]["name"]
            continue
        assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        names = {p.get("name") for p in svc["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= names


def kvmanager_table(rendered: Render) -> dict[str, Any]:
    cm = rendered.get("ConfigMap", "llmd-kvmanager-config")
    assert cm is not None
    table: dict[str, Any] = yaml.safe_load(cm["data"]["kvmanager.yaml"])
    return table


def test_kvmanager_hashes_blocks_as_the_engines_do(rendered: Render) -> None:
    """A block hash depends on the block size, the algorithm and the seed: any difference between
    an engine and the kvmanager and no precise prefix score ever matches. Tokenization must match
    too: the model's own tokenizer, or vllm-sim's built-in one when the sim has no --tokenizer."""
    models = {m["name"]: m for m in kvmanager_table(rendered)["models"]}
    for t in rendered.pod_templates():
        if t.labels.get("app.kubernetes.io/component") != "engine":
            continue
        (c,) = t.spec["containers"]
        argv = _args(c)
        served = _flag(argv, "--served-model-name")
        assert served in models, f"{t.where}: kvmanager has no model {served!r}"
        m = models[served]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert m.get("block_size", 16) == int(_flag(argv, "--block-size") or 16), t.where
        assert m.get("hash_algo", "sha256") == (
            _flag(argv, "--prefix-caching-hash-algo") or "sha256"
        )
        assert m.get("hash_seed") == env.get("PYTHONHASHSEED"), t.where
        if "llmd-sim" in argv[0] and _flag(argv, "--tokenizer") is None:
            assert m.get("builtin_tokenizer") is True, t.where
        else:
            model = _flag(argv, "--model") or argv[argv.index("serve") + 1]
            assert m.get("tokenizer") == f"/tokenizers/{model}", t.where


def test_kvmanager_fetches_tokenizers_where_it_reads_them(rendered: Render) -> None:
    kv = rendered.need("Deployment", "llmd-kvmanager")["spec"]["template"]["spec"]
    (init,) = kv["initContainers"]
    (main,) = kv["containers"]
    mounts = {
        c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (init, main)
    }
    assert mounts[init["name"]]["tokenizers"] == mounts[main["name"]]["tokenizers"] == "/tokenizers"
    config_arg = next(a for a in main["args"] if a.startswith("--config="))
    config_dir = config_arg.split("=", 1)[1].rsplit("/", 1)[0]
    assert mounts[main["name"]]["config"] == mounts[init["name"]]["config"] == config_dir
    assert f"{config_arg.split('=', 1)[1]}" in init["command"][-1]


def test_expert_router_plans_for_the_deployed_ep_group(rendered: Render) -> None:
    router = rendered.get("Deployment", "llmd-expert-router")
    if router is None:
        return
    (c,) = router["spec"]["template"]["spec"]["containers"]
    ranks, nodes = (
        int(_flag(c["args"], "--num-ranks") or 0),
        int(_flag(c["args"], "--num-nodes") or 0),
    )
    for lws in rendered.of_kind("LeaderWorkerSet"):
        leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
        argv = _args(leader)
        assert "--enable-expert-parallel" in argv
        assert ranks == int(_flag(argv, "--data-parallel-size") or 0), "EP ranks = DP size"
        assert nodes == lws["spec"]["leaderWorkerTemplate"]["size"], "nodes = LWS group size"
