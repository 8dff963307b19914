"""The configuration files the overlays mount load in the services' own loaders, with the flags the
pods pass: BBR's model table and the kvmanager's settings (the EPP's is in test_epp_config.py)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tree import Obj, Render


def loader(module: str, name: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed yet (its service has not landed)")
    fn = getattr(mod, name, None)
    assert callable(fn), f"{module}.{name} is gone: point this test at the service's loader"
    return fn


def container(rendered: Render, deployment: str) -> tuple[Obj, Obj]:
    d = rendered.get("Deployment", deployment)
    assert d is not None
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return pod, c


def mounted_file(rendered: Render, deployment: str, path: str) -> str:
    """The content a pod sees at `path`, through its ConfigMap volume."""
    pod, c = container(rendered, deployment)
    mount = next(m for m in c["volumeMounts"] if Path(path).parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = rendered.get("ConfigMap", volume["configMap"]["name"])
    assert cm is not None
    text: str = cm["data"][Path(path).name]
    return text


def test_bbr_model_table_loads(rendered: Render) -> None:
    parse_table = loader("llmd_bbr.model_table", "parse_table")
    _, c = container(rendered, "llmd-bbr")
    (arg,) = [a for a in c["args"] if a.startswith("--models-config=")]
    table = parse_table(mounted_file(rendered, "llmd-bbr", arg.split("=", 1)[1]), source="bbr")
    assert table is not None


def test_kvmanager_settings_load_with_the_pods_flags(rendered: Render, tmp_path: Path) -> None:
    load_config = loader("llmd_kvmanager.config", "load_config")
    _, c = container(rendered, "llmd-kvmanager")
    args = []
    for a in c["args"]:
        if a.startswith("--config="):
            local = tmp_path / "kvmanager.yaml"
            local.write_text(mounted_file(rendered, "llmd-kvmanager", a.split("=", 1)[1]))
            a = f"--config={local}"
        args.append(a)
    cfg = load_config(args)
    assert cfg.grpc_port == 9010 and cfg.http_port == 9011
    assert cfg.ingest.bind == "tcp://*:5557"
    served = yaml.safe_load(
        mounted_file(rendered, "llmd-kvmanager", "/etc/llmd/kvmanager/kvmanager.yaml")
    )
    assert [m.name for m in cfg.models] == [m["name"] for m in served["models"]]


def test_bbr_flags_parse_with_the_pods_values(rendered: Render) -> None:
    parse_args = loader("llmd_bbr.config", "parse_args")
    _, c = container(rendered, "llmd-bbr")
    _, settings = parse_args(c["args"])
    assert (settings.grpc_port, settings.health_port, settings.metrics_port) == (9004, 9005, 9094)
    # The body mode BBR assumes is the one the gateway's EnvoyFilter configures.
    ef = rendered.need("EnvoyFilter", "llmd-bbr")
    mode = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"]
    assert settings.body_mode.name == mode["request_body_mode"]


def test_epp_flags_parse_with_the_pods_values(rendered: Render) -> None:
    parse_settings = loader("llmd_epp.config", "parse_settings")
    _, c = container(rendered, "llmd-epp")
    settings = parse_settings(c["args"], env={})
    assert settings.source_kind == "kubernetes"
    assert settings.pool_name == rendered.need("InferencePool", "llmd")["metadata"]["name"]
    assert (settings.grpc_port, settings.grpc_health_port, settings.metrics_port) == (
        9002,
        9003,
        9090,
    )
