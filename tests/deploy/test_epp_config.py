"""The EndpointPickerConfig each overlay hands the EPP: well formed, wired to the pod's flags, fit
for the mode's engines, and accepted by the EPP's own config loader."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tree import Obj, Render


def epp_container(rendered: Render) -> Obj:
    (c,) = rendered.need("Deployment", "llmd-epp")["spec"]["template"]["spec"]["containers"]
    container: Obj = c
    return container


def config_text(rendered: Render) -> str:
    """The file the EPP reads: its --config-file, resolved through the pod's ConfigMap mount."""
    c = epp_container(rendered)
    (arg,) = [a for a in c["args"] if a.startswith("--config-file=")]
    path = Path(arg.split("=", 1)[1])
    pod = rendered.need("Deployment", "llmd-epp")["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if path.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = rendered.get("ConfigMap", volume["configMap"]["name"])
    assert cm is not None
    assert path.name in cm["data"], f"ConfigMap has {sorted(cm['data'])}, the EPP reads {path.name}"
    text: str = cm["data"][path.name]
    return text


def config(rendered: Render) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(config_text(rendered))
    return cfg


def test_config_is_well_formed(rendered: Render) -> None:
    cfg = config(rendered)
    assert cfg["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert cfg["kind"] == "EndpointPickerConfig"
    names = [p.get("name", p["type"]) for p in cfg["plugins"]]
    assert len(names) == len(set(names)), f"duplicate plugin names {names}"
    types = {p.get("name", p["type"]): p["type"] for p in cfg["plugins"]}
    handlers = [t for t in types.values() if t.endswith("-profile-handler")]
    assert len(handlers) == 1, handlers
    assert cfg["schedulingProfiles"]
    for profile in cfg["schedulingProfiles"]:
        refs = [r["pluginRef"] for r in profile["plugins"]]
        unknown = set(refs) - set(types)
        assert not unknown, f"profile {profile['name']}: undeclared plugins {unknown}"
        pickers = [r for r in refs if types[r].endswith("-picker")]
        assert len(pickers) == 1, f"profile {profile['name']}: pickers {pickers}"
        for r in profile["plugins"]:
            if "weight" in r:
                assert isinstance(r["weight"], int) and r["weight"] > 0, r


def test_mode_profile_fits_the_engines(rendered: Render, overlay: str) -> None:
    cfg = config(rendered)
    types = {p.get("name", p["type"]): p for p in cfg["plugins"]}
    profiles = {p["name"]: p for p in cfg["schedulingProfiles"]}
    roles = {
        t.labels["llm-d.ai/role"]
        for t in rendered.pod_templates()
        if t.labels.get("llm-d.ai/inferenceServing") == "true"
    }
    if overlay.endswith("pd-disaggregation"):
        assert {"prefill", "decode"} <= set(profiles)
        assert any(p["type"] == "pd-profile-handler" for p in types.values())
        for name in ("prefill", "decode"):
            filters = [
                types[r["pluginRef"]]
                for r in profiles[name]["plugins"]
                if types[r["pluginRef"]]["type"] == "by-label"
            ]
            assert len(filters) == 1, f"{name} profile: one by-label filter"
            params = filters[0]["parameters"]
            assert params["label"] == "llm-d.ai/role"
            # The filter keeps some of the pool's engines, and never the other side's.
            assert set(params["validValues"]) & roles, (params, roles)
            other = "decode" if name == "prefill" else "prefill"
            assert other not in params["validValues"]
    else:
        assert any(p["type"] == "single-profile-handler" for p in types.values())
        assert roles == {"both"}
    if overlay.endswith("wide-ep"):
        # The rank picker must know the group's size: a rank past it would be refused by vLLM.
        (picker,) = [p for p in types.values() if p["type"] == "dp-rank-balancer"]
        sizes = {
            int(args[i + 1])
            for t in rendered.pod_templates()
            for c in t.containers()
            for args in [" ".join([*c.get("command", []), *c.get("args", [])]).split()]
            for i, a in enumerate(args)
            if a == "--data-parallel-size"
        }
        assert sizes == {picker["parameters"]["dataParallelSize"]}, sizes


def test_precise_prefix_scorer_reaches_the_kvmanager(rendered: Render) -> None:
    if not any(p["type"] == "precise-prefix-cache-scorer" for p in config(rendered)["plugins"]):
        return
    (arg,) = [a for a in epp_container(rendered)["args"] if a.startswith("--kvmanager-address=")]
    host, _, port = arg.split("=", 1)[1].partition(":")
    svc = rendered.get("Service", host)
    assert svc is not None, f"no Service {host}"
    grpc = next(p for p in svc["spec"]["ports"] if p["port"] == int(port))
    assert grpc["targetPort"] == "grpc"


# The EPP's loader: YAML text in, the scheduler out (ConfigError naming the field otherwise).
LOADER = ("llmd_epp.pickerconfig", "load_picker_config")


def epp_loader() -> Any:
    module, name = LOADER
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed yet (the EPP has not landed): config not loaded")
    fn = getattr(mod, name, None)
    assert callable(fn), f"{module}.{name} is gone: point LOADER at the EPP's config loader"
    return fn


def test_config_loads_in_the_real_epp(rendered: Render) -> None:
    load = epp_loader()
    loaded = load(config_text(rendered), source="llmd-epp-config")
    declared = {p.get("name", p["type"]) for p in config(rendered)["plugins"]}
    assert set(loaded.plugins) == declared
    assert loaded.warnings == []  # e.g. a plugin reading a prefix plugin the config lacks
