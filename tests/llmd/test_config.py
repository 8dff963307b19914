"""The stack configuration and the plan built from it (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmd.local import ConfigError, build_plan, load_config, parse_config
from llmd.local.plan import bbr_doc, gateway_doc, kvmanager_doc, modelservice_doc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local.yaml"


def minimal(**extra: object) -> dict[str, object]:
    return {"models": [{"name": "m", "model": "org/m"}], **extra}


def test_the_example_is_two_models_four_replicas_one_lora() -> None:
    cfg = load_config(EXAMPLE)
    assert [m.name for m in cfg.models] == ["qwen3", "llama"]
    assert sum(m.replicas for m in cfg.models) == 4
    assert [lo.name for m in cfg.models for lo in m.loras] == ["ski-resorts"]
    assert cfg.gateway.port == 8000 and cfg.host == "127.0.0.1"
    types = [p["type"] for p in cfg.epp_config["plugins"]]
    assert "precise-prefix-cache-scorer" in types


def test_the_shipped_epp_configs_load_in_the_real_epp_without_warnings() -> None:
    from llmd_epp.pickerconfig import load_picker_config

    from llmd.bench.live import PRECISE_EPP, UPSTREAM_DEFAULT_EPP
    from llmd.local.config import PRECISE_PREFIX_EPP_CONFIG

    docs = {
        "examples/local.yaml": load_config(EXAMPLE).epp_config,
        "llmd up default": PRECISE_PREFIX_EPP_CONFIG,
        "bench epp-precise": PRECISE_EPP,
        "bench epp-default": UPSTREAM_DEFAULT_EPP,
    }
    for source, doc in docs.items():
        assert load_picker_config(yaml.safe_dump(doc), source=source).warnings == [], source


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "config: models: Field required"),
        (minimal(gateway={"port": 70000}), "config: gateway.port: Input should be less than or"),
        (minimal(gateway={"prot": 1}), "config: gateway.prot: unknown field"),
        (
            {"models": [{"name": "m", "model": "a", "replicas": 0}]},
            "config: models[0].replicas: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"models": [{"name": "Bad_Name", "model": "a"}]},
            "config: models[0].name: String should match pattern",
        ),
        (
            {"models": [{"name": "a", "model": "x"}, {"name": "a", "model": "y"}]},
            "config: models: the name 'a' is used twice",
        ),
        (
            {"models": [{"name": "a", "model": "x"}, {"name": "b", "model": "x"}]},
            "config: models: 'x' is served by two models",
        ),
        (minimal(bbr={"grpcPort": 8000}), "config: bbr.grpcPort: port 8000 is also gateway.port"),
        ("just text", "config: expected a mapping at the top level"),
    ],
)
def test_bad_configs_are_one_line_naming_the_field(doc: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(message)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file$"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(bad)


def test_engine_defaults_merge_under_a_models_own_engine() -> None:
    cfg = parse_config(
        {
            "engine": {"kind": "sim", "timeScale": 0.5, "extraArgs": ["--a"], "env": {"X": "1"}},
            "models": [
                {"name": "m", "model": "o/m", "engine": {"timeScale": 0.1, "extraArgs": ["--b"]}}
            ],
        }
    )
    eng = cfg.model_engine(cfg.models[0])
    assert (eng.kind, eng.time_scale, eng.extra_args, eng.env) == (
        "sim",
        0.1,
        ["--a", "--b"],
        {"X": "1"},
    )


def test_free_ports_are_distinct_and_engines_pick_their_own() -> None:
    cfg = load_config(EXAMPLE).with_free_ports()
    ports = [p for _, p in cfg.fixed_ports()]
    assert len(ports) == len(set(ports)) and all(ports)
    assert 8000 not in ports
    assert all(m.base_port == 0 for m in cfg.models)


def test_documents_wire_the_components_together(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE)
    ms = modelservice_doc(cfg, cfg.models[1])
    assert ms["kind"] == "ModelService" and ms["metadata"]["name"] == "llama"
    spec = ms["spec"]
    assert spec["replicas"] == 2 and spec["local"]["basePort"] == 8210
    assert spec["loras"] == [{"name": "ski-resorts", "path": "/adapters/ski-resorts"}]
    assert spec["kvEvents"]["endpoint"] == "tcp://127.0.0.1:5557"
    assert kvmanager_doc(cfg)["ingest"]["bind"] == "tcp://127.0.0.1:5557"
    gw = gateway_doc(cfg)
    assert gw["bbr"]["target"] == "127.0.0.1:9004"
    # The dev gateway calls BBR as the shipped EnvoyFilter has Envoy call it.
    envoy_filter = yaml.safe_load(
        (ROOT / "deploy/kustomize/components/inference-scheduling/bbr-envoyfilter.yaml").read_text()
    )
    mode = envoy_filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"][
        "processing_mode"
    ]
    assert gw["bbr"]["response_header_mode"] == mode["response_header_mode"] == "SKIP"
    assert mode["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    llama = next(p for p in gw["pools"] if p["name"] == "llama")
    assert llama["models"] == ["meta-llama/Llama-3.1-8B-Instruct", "ski-resorts"]
    assert llama["epp"]["target"] == "127.0.0.1:9102"
    # The EPP holds its answer while flow control queues a request (30 s TTL by default): a
    # shorter ext_proc message timeout would fail queued requests with a 504 first.
    assert llama["epp"]["message_timeout_s"] > 30
    assert bbr_doc(cfg)["adapters"] == {"meta-llama/Llama-3.1-8B-Instruct": ["ski-resorts"]}

    plan = build_plan(cfg, tmp_path)
    names = [p.name for p in plan.processes]
    assert names == ["kvmanager", "modelservice", "bbr", "epp/qwen3", "epp/llama", "gateway"]
    by = {p.name: p for p in plan.processes}
    # Start: services, then the pickers, then the gateway. Stop: gateway first, engines last.
    assert (by["kvmanager"].stage, by["epp/llama"].stage, by["gateway"].stage) == (0, 1, 2)
    assert min(plan.processes, key=lambda p: p.stop_rank).name == "gateway"
    assert max(plan.processes, key=lambda p: p.stop_rank).name == "modelservice"
    epp_argv = by["epp/llama"].argv
    assert epp_argv[epp_argv.index("--modelservice-url") + 1] == "http://127.0.0.1:8090"
    objectives = yaml.safe_load(Path(epp_argv[epp_argv.index("--objectives-file") + 1]).read_text())
    assert objectives == {"interactive": 10, "batch": -1}
    written = yaml.safe_load(plan.files["epp/qwen3"].read_text())
    assert written == cfg.epp_config


def test_spec_passthrough_is_merged_last() -> None:
    cfg = parse_config(
        {"models": [{"name": "m", "model": "o/m", "spec": {"engine": {"maxNumSeqs": 3}}}]}
    )
    spec = modelservice_doc(cfg, cfg.models[0])["spec"]
    assert spec["engine"] == {"kind": "sim", "maxNumSeqs": 3}
