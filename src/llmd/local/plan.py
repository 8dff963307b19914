"""From a `StackConfig` to the files and processes of the local stack.

    kvmanager      stage 0   stopped 4th   binds the ZMQ socket the engines publish KV events to
    modelservice   stage 0   stopped last  starts, health-checks and restarts the engines
    bbr            stage 0   stopped 2nd   ext_proc: body `model` -> X-Gateway-Model-Name
    epp/<pool>     stage 1   stopped 3rd   ext_proc: picks an engine of its pool
    gateway        stage 2   stopped 1st   the dev gateway on host:gateway.port

Every component is started as `python -m <module>` of this interpreter (the workspace venv), with
the file it reads written to the run directory, so what runs is exactly what the files say.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmd.local.config import ConfigError, ModelSection, StackConfig
from llmd.local.probes import GrpcHealthProbe, HttpProbe
from llmd.local.process import ProcessSpec
from llmd.local.replicas import ModelServiceProbe

KVMANAGER, MODELSERVICE, BBR, GATEWAY = "kvmanager", "modelservice", "bbr", "gateway"
ENGINE_LOG_PREFIX = "engine"


@dataclass(slots=True)
class Plan:
    config: StackConfig
    run_dir: Path
    processes: list[ProcessSpec] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://{_host(self.config.host)}:{self.config.gateway.port}"

    @property
    def modelservice_url(self) -> str:
        return f"http://{_host(self.config.host)}:{self.config.modelservice.port}"

    def epp_name(self, model: ModelSection) -> str:
        return f"epp/{model.name}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _addr(host: str, port: int) -> str:
    return f"{_host(host)}:{port}"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, recursing into mappings (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
    return path


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


# --------------------------------------------------------------------------- documents
def kvmanager_doc(cfg: StackConfig) -> dict[str, Any]:
    kv = cfg.kvmanager
    models = []
    for m in cfg.models:
        engine = cfg.model_engine(m)
        for name in m.served_names or [m.model]:
            models.append(
                {
                    "name": name,
                    # vllm-sim tokenizes with the SDK's built-in tokenizer; vLLM with the model's.
                    "builtin_tokenizer": engine.kind == "sim",
                    **({} if engine.kind == "sim" else {"tokenizer": m.model}),
                    "hash_algo": "sha256",
                    "hash_seed": "42",
                    "block_size": engine.block_size or 16,
                    "loras": {lo.name: lo.path for lo in m.loras},
                }
            )
    doc: dict[str, Any] = {
        "host": cfg.host,
        "grpc_port": kv.grpc_port,
        "http_port": kv.http_port,
        "log_level": cfg.log_level.upper(),
        "log_json": True,
        "backend": {"kind": kv.backend, **({"redis_url": kv.redis_url} if kv.redis_url else {})},
        "ingest": {"bind": f"tcp://{_host(cfg.host)}:{kv.zmq_port}"},
        "models": models,
    }
    return deep_merge(doc, kv.extra)


def modelservice_doc(cfg: StackConfig, m: ModelSection) -> dict[str, Any]:
    engine = cfg.model_engine(m)
    engine_doc: dict[str, Any] = {"kind": engine.kind or "sim"}
    if engine.max_num_seqs:
        engine_doc["maxNumSeqs"] = engine.max_num_seqs
    if engine.block_size:
        engine_doc["blockSize"] = engine.block_size
    if engine.extra_args:
        engine_doc["extraArgs"] = list(engine.extra_args)
    if engine.env:
        engine_doc["env"] = dict(engine.env)
    sim = {
        k: v
        for k, v in {
            "mode": engine.mode,
            "latencyProfile": engine.latency_profile,
            "timeScale": engine.time_scale,
        }.items()
        if v is not None
    }
    if sim:
        engine_doc["sim"] = sim
    spec: dict[str, Any] = {
        # vLLM serves the model under its own name unless told otherwise; modelservice would
        # default to metadata.name, so name them explicitly.
        "model": {"name": m.model, "servedNames": m.served_names or [m.model]},
        "replicas": m.replicas,
        "engine": engine_doc,
        "kvEvents": {
            "enabled": cfg.kvmanager.enabled,
            "mode": "connect",
            "endpoint": f"tcp://{_host(cfg.host)}:{cfg.kvmanager.zmq_port}",
        },
        "health": {
            "intervalSeconds": cfg.modelservice.health_interval_s,
            "timeoutSeconds": max(1.0, cfg.modelservice.health_interval_s),
            "startupTimeoutSeconds": cfg.startup_timeout_s,
        },
        "restart": {"backoffInitialSeconds": 0.5, "backoffMaxSeconds": 5.0},
        "drain": {"graceSeconds": 2.0, "stopTimeoutSeconds": 5.0},
        "local": {"host": cfg.host, "basePort": m.base_port},
        "router": {"poolName": m.name},
    }
    if m.loras:
        spec["loras"] = [{"name": lo.name, "path": lo.path} for lo in m.loras]
    if m.max_loras:
        spec["maxLoras"] = m.max_loras
    doc = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": m.name},
        "spec": deep_merge(spec, m.spec),
    }
    return doc


def bbr_doc(cfg: StackConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "baseModels": [n for m in cfg.models for n in (m.served_names or [m.model])],
        "adapters": {m.first_name: [lo.name for lo in m.loras] for m in cfg.models if m.loras},
    }
    if cfg.bbr.aliases:
        doc["aliases"] = dict(cfg.bbr.aliases)
    return doc


def gateway_doc(cfg: StackConfig) -> dict[str, Any]:
    host = cfg.host
    return {
        "host": host,
        "port": cfg.gateway.port,
        # BBR only routes requests: as the shipped EnvoyFilter configures Envoy
        # (components/inference-scheduling/bbr-envoyfilter.yaml), it is not sent the response.
        "bbr": {"target": _addr(host, cfg.bbr.grpc_port), "response_header_mode": "SKIP"},
        "pools": [
            {
                "name": m.name,
                "models": m.names,
                "epp": {
                    "target": _addr(host, cfg.epp_ports(i)[0]),
                    # As the Gateway API Inference Extension configures Envoy: the EPP sees the
                    # whole exchange, so it learns usage and the served endpoint.
                    "request_body_mode": "FULL_DUPLEX_STREAMED",
                    "response_body_mode": "FULL_DUPLEX_STREAMED",
                    # Flow control holds the EPP's answer while a request is queued (up to its
                    # TTL), so the stream must outlive that; the Inference Extension's Envoy
                    # Gateway example sets messageTimeout: 1000s for the same reason.
                    "message_timeout_s": 1000.0,
                },
            }
            for i, m in enumerate(cfg.models)
        ],
        "default_pool": cfg.models[0].name,
        "upstream_connect_timeout_s": cfg.gateway.connect_timeout_s,
        "upstream_read_timeout_s": cfg.gateway.read_timeout_s,
    }


# --------------------------------------------------------------------------------- plan
def build_plan(cfg: StackConfig, run_dir: Path) -> Plan:
    """Write every component's file under `run_dir` and list the processes to run."""
    plan = Plan(cfg, run_dir)
    host = cfg.host
    level = cfg.log_level
    run_dir.mkdir(parents=True, exist_ok=True)

    if cfg.kvmanager.enabled:
        path = _write(run_dir / "kvmanager.yaml", kvmanager_doc(cfg))
        plan.files[KVMANAGER] = path
        plan.processes.append(
            ProcessSpec(
                name=KVMANAGER,
                argv=[*_python("llmd_kvmanager.server"), "--config", str(path)],
                address=_addr(host, cfg.kvmanager.grpc_port),
                probe=HttpProbe(f"http://{_addr(host, cfg.kvmanager.http_port)}/readyz"),
                stage=0,
                stop_rank=3,
            )
        )

    spec_paths = []
    for m in cfg.models:
        path = _write(run_dir / "models" / f"{m.name}.yaml", modelservice_doc(cfg, m))
        plan.files[f"model/{m.name}"] = path
        spec_paths.append(str(path))
    engine_logs = run_dir / "engines"
    plan.processes.append(
        ProcessSpec(
            name=MODELSERVICE,
            argv=[
                *_python("llmd_modelservice.server"),
                "serve",
                *spec_paths,
                "--host",
                host,
                "--port",
                str(cfg.modelservice.port),
                "--log-dir",
                str(engine_logs),
                "--log-format",
                "json",
                "--log-level",
                level,
            ],
            address=plan.modelservice_url,
            probe=ModelServiceProbe(plan.modelservice_url),
            stage=0,
            stop_rank=4,
            # Engines drain, then stop: give modelservice time for all of them.
            stop_timeout_s=cfg.stop_timeout_s,
            log_dir=engine_logs,
            log_dir_prefix=ENGINE_LOG_PREFIX,
        )
    )

    path = _write(run_dir / "bbr-models.yaml", bbr_doc(cfg))
    plan.files[BBR] = path
    plan.processes.append(
        ProcessSpec(
            name=BBR,
            argv=[
                *_python("llmd_bbr.server"),
                "--host",
                host,
                "--grpc-port",
                str(cfg.bbr.grpc_port),
                "--health-port",
                str(cfg.bbr.health_port),
                "--metrics-port",
                str(cfg.bbr.metrics_port),
                "--models-config",
                str(path),
                "--log-level",
                level.upper(),
                "--grace-period",
                "2",
            ],
            address=_addr(host, cfg.bbr.grpc_port),
            probe=GrpcHealthProbe(_addr(host, cfg.bbr.health_port)),
            stage=0,
            stop_rank=1,
        )
    )

    for i, m in enumerate(cfg.models):
        plan.processes.append(_epp_process(cfg, plan, i, m))

    path = _write(run_dir / "gateway.yaml", gateway_doc(cfg))
    plan.files[GATEWAY] = path
    plan.processes.append(
        ProcessSpec(
            name=GATEWAY,
            argv=[*_python("llmd.gateway"), "--config", str(path), "--log-level", level],
            address=plan.gateway_url,
            probe=HttpProbe(f"{plan.gateway_url}/healthz"),
            stage=2,
            stop_rank=0,
        )
    )
    return plan


def _epp_process(cfg: StackConfig, plan: Plan, index: int, m: ModelSection) -> ProcessSpec:
    host = cfg.host
    grpc, health, metrics = cfg.epp_ports(index)
    epp = m.epp
    if epp.config_file is not None:
        config_path = epp.config_file.resolve()
    else:
        config_path = _write(plan.run_dir / f"epp-{m.name}.yaml", epp.config or cfg.epp_config)
    plan.files[plan.epp_name(m)] = config_path
    argv = [
        *_python("llmd_epp"),
        "--host",
        host,
        "--grpc-port",
        str(grpc),
        "--grpc-health-port",
        str(health),
        "--metrics-port",
        str(metrics),
        "--config-file",
        str(config_path),
        "--pool-name",
        m.name,
        "--flow-control",
        epp.flow_control,
        "--log-format",
        "json",
        "--log-level",
        cfg.log_level.upper(),
        "--drain-timeout",
        "2s",
    ]
    if epp.endpoint_source == "modelservice":
        # modelservice names each endpoint's model by its ModelService (= pool) name.
        argv += ["--modelservice-url", plan.modelservice_url, "--modelservice-model", m.name]
    else:
        if not m.base_port:
            raise ConfigError(f"models[{index}].epp.endpointSource: static needs a fixed basePort")
        argv += ["--endpoints", ",".join(_addr(host, m.base_port + r) for r in range(m.replicas))]
    if cfg.kvmanager.enabled:
        argv += ["--kvmanager-address", _addr(host, cfg.kvmanager.grpc_port)]
    if epp.objectives:
        path = _write(plan.run_dir / f"objectives-{m.name}.yaml", dict(epp.objectives))
        argv += ["--objectives-file", str(path)]
    if epp.refresh_metrics_interval:
        argv += ["--refresh-metrics-interval", epp.refresh_metrics_interval]
    argv += epp.extra_args
    return ProcessSpec(
        name=plan.epp_name(m),
        argv=argv,
        address=_addr(host, grpc),
        probe=GrpcHealthProbe(_addr(host, health)),
        stage=1,
        stop_rank=2,
    )
