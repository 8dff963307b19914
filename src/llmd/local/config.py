"""The local stack's configuration: one YAML file (`examples/local.yaml`) for every component.

    host: 127.0.0.1                  # every component binds here
    gateway: {port: 8000}
    kvmanager: {grpcPort: 9010, httpPort: 9011, zmqPort: 5557}
    bbr: {grpcPort: 9004, healthPort: 9005, metricsPort: 9094}
    modelservice: {port: 8090}
    engine: {kind: sim, latencyProfile: ..., timeScale: 1.0}     # defaults for every model
    eppConfig: {...}                 # EndpointPickerConfig every pool's EPP runs (default below)
    models:
      - name: qwen                   # ModelService and InferencePool name
        model: Qwen/Qwen3-0.6B
        replicas: 2
        basePort: 8200
        loras: [{name: sql-lora, path: /adapters/sql-lora}]
        epp: {grpcPort: 9002, healthPort: 9003, metricsPort: 9090}

A port of 0 means "any free port" (tests and benchmarks use `with_free_ports()`). Field names
are camelCase as in the ModelService and EndpointPickerConfig documents the file embeds;
snake_case is accepted too. Every error is one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

Port = Annotated[int, Field(ge=0, le=65535)]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ConfigError(ValueError):
    """A stack configuration that does not load; the message is one line."""


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, validate_default=True
    )


# The EndpointPickerConfig every pool gets unless the file says otherwise: llm-d's precise
# prefix-cache routing (kvmanager's view of the engines' KV events), plus queue depth and KV
# utilisation so that load still spreads, and a prompt no engine holds goes to the engine least
# recently given one (no-hit-lru-scorer) rather than to a load tie broken at random.
PRECISE_PREFIX_EPP_CONFIG: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "single-profile-handler"},
        {"type": "precise-prefix-cache-scorer"},
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {
            "type": "no-hit-lru-scorer",
            "parameters": {"prefixPluginName": "precise-prefix-cache-scorer"},
        },
        # Two endpoints: the second is the fallback the gateway tries if the first fails.
        {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 2}},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
                {"pluginRef": "queue-scorer", "weight": 1},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 1},
                {"pluginRef": "no-hit-lru-scorer", "weight": 1},
                {"pluginRef": "max-score-picker"},
            ],
        }
    ],
}


class GatewaySection(_Model):
    port: Port = 8000
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=600.0, gt=0)


class KVManagerSection(_Model):
    enabled: bool = True
    grpc_port: Port = 9010
    http_port: Port = 9011
    zmq_port: Port = Field(default=5557, description="SUB socket the engines connect to")
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    extra: dict[str, Any] = Field(
        default_factory=dict, description="merged into kvmanager's own YAML (its field names)"
    )


class BBRSection(_Model):
    grpc_port: Port = 9004
    health_port: Port = 9005
    metrics_port: Port = 9094
    aliases: dict[str, Any] = Field(default_factory=dict, description="BBR model-file aliases")


class ModelServiceSection(_Model):
    port: Port = 8090
    health_interval_s: float = Field(default=1.0, gt=0)


class EngineSection(_Model):
    """Engine options; the stack's `engine` is the default, a model's `engine` overrides it."""

    kind: Literal["sim", "vllm", "sglang"] | None = None
    latency_profile: str | None = None
    time_scale: float | None = Field(default=None, gt=0)
    mode: str | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    def over(self, base: EngineSection) -> EngineSection:
        """This section's fields where set, `base`'s elsewhere (lists and env are joined)."""
        merged = base.model_dump()
        for key, value in self.model_dump(exclude_unset=True).items():
            if key == "extra_args":
                merged[key] = [*base.extra_args, *value]
            elif key == "env":
                merged[key] = {**base.env, **value}
            elif value is not None:
                merged[key] = value
        return EngineSection.model_validate(merged)


class EPPSection(_Model):
    grpc_port: Port | None = Field(default=None, description="default 9002 + 100 per pool")
    health_port: Port | None = None
    metrics_port: Port | None = None
    config: dict[str, Any] | None = Field(
        default=None, description="EndpointPickerConfig for this pool (default: eppConfig)"
    )
    config_file: Path | None = None
    endpoint_source: Literal["modelservice", "static"] = Field(
        default="modelservice",
        description="modelservice: the EPP follows modelservice's endpoint watch; static: the "
        "replicas' planned addresses are given to it once",
    )
    flow_control: Literal["auto", "on", "off"] = "auto"
    objectives: dict[str, int] = Field(
        default_factory=dict, description="InferenceObjective name -> priority (< 0: sheddable)"
    )
    refresh_metrics_interval: str | None = None
    extra_args: list[str] = Field(default_factory=list)


class LoraSection(_Model):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


class ModelSection(_Model):
    name: str = Field(pattern=_DNS_LABEL, max_length=63)
    model: str = Field(min_length=1, description="Hugging Face id the engines serve")
    served_names: list[str] = Field(default_factory=list)
    replicas: int = Field(default=1, ge=1)
    base_port: Port = Field(default=0, description="first engine port; 0: any free ports")
    loras: list[LoraSection] = Field(default_factory=list)
    max_loras: int | None = Field(default=None, ge=1)
    engine: EngineSection = Field(default_factory=EngineSection)
    epp: EPPSection = Field(default_factory=EPPSection)
    spec: dict[str, Any] = Field(
        default_factory=dict, description="more ModelService spec fields, merged in last"
    )

    @property
    def names(self) -> list[str]:
        """Every name a client may send in `model` for this pool (served names, adapters)."""
        return [*(self.served_names or [self.model]), *(lo.name for lo in self.loras)]

    @property
    def first_name(self) -> str:
        return (self.served_names or [self.model])[0]


class StackConfig(_Model):
    host: str = "127.0.0.1"
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    kvmanager: KVManagerSection = Field(default_factory=KVManagerSection)
    bbr: BBRSection = Field(default_factory=BBRSection)
    modelservice: ModelServiceSection = Field(default_factory=ModelServiceSection)
    engine: EngineSection = Field(default_factory=lambda: EngineSection(kind="sim"))
    epp_config: dict[str, Any] = Field(default_factory=lambda: dict(PRECISE_PREFIX_EPP_CONFIG))
    models: list[ModelSection] = Field(min_length=1)
    startup_timeout_s: float = Field(default=90.0, gt=0)
    stop_timeout_s: float = Field(default=15.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        names = [m.name for m in self.models]
        dup = _first_duplicate(names)
        if dup is not None:
            raise ValueError(f"models: the name {dup!r} is used twice")
        served = [n for m in self.models for n in m.names]
        dup = _first_duplicate(served)
        if dup is not None:
            raise ValueError(f"models: {dup!r} is served by two models (or twice by one)")
        ports = [(label, port) for label, port in self.fixed_ports() if port]
        seen: dict[int, str] = {}
        for label, port in ports:
            if port in seen:
                raise ValueError(f"{label}: port {port} is also {seen[port]}")
            seen[port] = label
        return self

    def model_engine(self, model: ModelSection) -> EngineSection:
        return model.engine.over(self.engine)

    def epp_ports(self, index: int) -> tuple[int, int, int]:
        """(ext_proc, health, metrics) ports of pool `index`: its own, or 9002/9003/9090 + 100i."""
        epp = self.models[index].epp
        step = 100 * index
        return (
            epp.grpc_port if epp.grpc_port is not None else 9002 + step,
            epp.health_port if epp.health_port is not None else 9003 + step,
            epp.metrics_port if epp.metrics_port is not None else 9090 + step,
        )

    def fixed_ports(self) -> list[tuple[str, int]]:
        """Every port this stack binds, with the config field that sets it (0 = any free)."""
        out = [("gateway.port", self.gateway.port)]
        if self.kvmanager.enabled:
            out += [
                ("kvmanager.grpcPort", self.kvmanager.grpc_port),
                ("kvmanager.httpPort", self.kvmanager.http_port),
                ("kvmanager.zmqPort", self.kvmanager.zmq_port),
            ]
        out += [
            ("bbr.grpcPort", self.bbr.grpc_port),
            ("bbr.healthPort", self.bbr.health_port),
            ("bbr.metricsPort", self.bbr.metrics_port),
            ("modelservice.port", self.modelservice.port),
        ]
        for i, m in enumerate(self.models):
            grpc, health, metrics = self.epp_ports(i)
            out += [
                (f"models[{i}].epp.grpcPort", grpc),
                (f"models[{i}].epp.healthPort", health),
                (f"models[{i}].epp.metricsPort", metrics),
            ]
            if m.base_port:
                out += [
                    (f"models[{i}].basePort (replica {r})", m.base_port + r)
                    for r in range(m.replicas)
                ]
        return out

    def with_free_ports(self) -> StackConfig:
        """A copy with every port set to a currently free one (tests, benchmarks)."""
        from llmd.local.ports import free_ports

        n = 9 + 3 * len(self.models) + sum(m.replicas for m in self.models)
        it = iter(free_ports(n, self.host))
        data = self.model_dump(by_alias=False)
        data["gateway"]["port"] = next(it)
        for key in ("grpc_port", "http_port", "zmq_port"):
            data["kvmanager"][key] = next(it)
        for key in ("grpc_port", "health_port", "metrics_port"):
            data["bbr"][key] = next(it)
        data["modelservice"]["port"] = next(it)
        for m in data["models"]:
            m["epp"]["grpc_port"], m["epp"]["health_port"], m["epp"]["metrics_port"] = (
                next(it),
                next(it),
                next(it),
            )
            # Engines take consecutive ports from basePort: 0 lets modelservice pick each.
            m["base_port"] = 0
        return StackConfig.model_validate(data)


def _first_duplicate(items: list[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("function-"):
            out += ("." if out else "") + to_camel(part)
    return out


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error as `field: message`."""
    err = exc.errors(include_url=False)[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = _loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if err["type"] != "missing" and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}" if where else msg


def parse_config(doc: Any, source: str = "config") -> StackConfig:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return StackConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None


def load_config(path: str | Path) -> StackConfig:
    """Read and validate a stack YAML file; `ConfigError` (one line) when it does not load."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}{where}: not valid YAML: {problem}") from None
    return parse_config(doc, str(p))
