"""The `ModelService` declaration: one model, its replicas, engine, parallelism and routing.

The same pydantic model validates local YAML files, is published as the CRD
`modelservices.llm-d.ai/v1alpha1` (see `crd.py`) and drives `render` and the planner. Field names
are camelCase on the wire, as Kubernetes objects are; Python code uses snake_case.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "llm-d.ai"
API_VERSION = "v1alpha1"
KIND = "ModelService"

EngineKind = Literal["sim", "vllm", "sglang"]
Role = Literal["both", "prefill", "decode"]
AcceleratorSelector = Literal["any", "nvidia", "amd", "intel-xpu", "tpu", "cpu"]
HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
DType = Literal["auto", "bfloat16", "float16", "half", "float32", "float", "fp8"]
KVCacheDType = Literal["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}

Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )


def parse_count(value: Any) -> int:
    """`8030261248`, `8.03e9`, `"8B"`, `"560M"` -> an integer count."""
    if isinstance(value, bool):
        raise ValueError("expected a count such as 8030261248, 8.03e9 or '8B'")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    if isinstance(value, str):
        m = _COUNT.match(value)
        if m:
            return round(float(m.group(1)) * _COUNT_SUFFIX[m.group(2).upper()])
    raise ValueError(f"expected a count such as 8030261248, 8.03e9 or '8B', got {value!r}")


class ModelArchitecture(_Model):
    """Enough of the model's config.json to size the KV cache (per token, all layers)."""

    num_layers: int = Field(ge=1, description="num_hidden_layers")
    num_kv_heads: int = Field(ge=1, description="num_key_value_heads")
    head_dim: int = Field(ge=1, description="hidden_size / num_attention_heads, or head_dim")


class ModelSource(_Model):
    """What to serve and how big it is."""

    name: str = Field(min_length=1, description="Hugging Face repo id or local path")
    served_names: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="names clients send in `model`; defaults to metadata.name",
    )
    parameters: int | str | None = Field(
        default=None,
        description="parameter count (8030261248, '8B'); enables the memory check",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    dtype: DType = "auto"
    max_model_len: int | None = Field(default=None, ge=1)
    architecture: ModelArchitecture | None = None
    trust_remote_code: bool = False

    @field_validator("parameters")
    @classmethod
    def _count(cls, v: int | str | None) -> int | str | None:
        if v is None:
            return None
        n = parse_count(v)
        if n <= 0:
            raise ValueError("must be positive")
        return n

    @property
    def parameter_count(self) -> int | None:
        return None if self.parameters is None else parse_count(self.parameters)


class LoraAdapter(_Model):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


class Parallelism(_Model):
    tensor: int = Field(default=1, ge=1)
    data: int = Field(default=1, ge=1)
    data_local: int | None = Field(
        default=None, ge=1, description="DP ranks per node; less than `data` means multi-node"
    )
    expert: bool = Field(default=False, description="--enable-expert-parallel (MoE)")

    @property
    def ranks_per_node(self) -> int:
        return self.data_local or self.data

    @property
    def nodes(self) -> int:
        return -(-self.data // self.ranks_per_node)

    @property
    def devices_per_node(self) -> int:
        return self.tensor * self.ranks_per_node


class SimOptions(_Model):
    mode: str | None = None
    latency_profile: str | None = None
    time_scale: float | None = Field(default=None, gt=0)


class EngineSpec(_Model):
    kind: EngineKind = "sim"
    image: str | None = Field(default=None, description="container image for render")
    command: list[str] | None = Field(
        default=None,
        description="replaces the launcher (e.g. a venv's vllm); planned args are appended",
    )
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    block_size: int = Field(default=16, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    prefix_caching_hash_algo: HashAlgo = "sha256"
    python_hash_seed: str = Field(
        default="42",
        pattern=r"^[0-9]+$",
        description="PYTHONHASHSEED; identical on every replica so block hashes agree",
    )
    sim: SimOptions = Field(default_factory=SimOptions)

    @field_validator("python_hash_seed")
    @classmethod
    def _seed_range(cls, v: str) -> str:
        if int(v) > 4294967295:
            raise ValueError("PYTHONHASHSEED must be in 0..4294967295")
        return v


class KVCacheSpec(_Model):
    """The KV budget the memory check reserves per device, beside the weights."""

    budget_gib: float | None = Field(
        default=None, gt=0, alias="budgetGiB", description="explicit budget per device"
    )
    sequences: int = Field(
        default=1, ge=1, description="full-length sequences the cache must hold (with architecture)"
    )
    dtype: KVCacheDType = "auto"


class Resources(_Model):
    cpu: str | None = None
    memory: str | None = None
    extra: dict[str, str] = Field(default_factory=dict, description="more resource limits")


class HardwareSelector(_Model):
    accelerator: AcceleratorSelector = "any"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class KVEventsSpec(_Model):
    """Where each replica publishes its KV-cache events (vLLM `--kv-events-config`)."""

    enabled: bool = True
    mode: Literal["connect", "bind"] = Field(
        default="connect",
        description="connect: engines connect to `endpoint` (kvmanager binds); "
        "bind: each engine binds `bindPort` and kvmanager connects to it",
    )
    endpoint: str = Field(default="tcp://127.0.0.1:5557", pattern=r"^(tcp|ipc|inproc)://.+")
    bind_port: Port = Field(default=5557, description="bind mode; locally +1 per replica")
    replay_port: Port | None = Field(default=None, description="ROUTER replay socket port")
    buffer_steps: int | None = Field(default=None, ge=1)
    hwm: int | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)


class KVTransferSpec(_Model):
    """P/D disaggregation: vLLM `--kv-transfer-config`."""

    connector: str = "NixlConnector"
    role: Literal["kv_both", "kv_producer", "kv_consumer"] = "kv_both"
    side_channel_port: Port = Field(default=5600, description="NIXL side channel; +1 per replica")
    extra_config: dict[str, Any] = Field(default_factory=dict)


class HealthSpec(_Model):
    path: str = "/health"
    interval_seconds: Seconds = 5.0
    timeout_seconds: Seconds = 2.0
    failure_threshold: int = Field(default=3, ge=1)
    startup_timeout_seconds: Seconds = 900.0


class RestartSpec(_Model):
    max_failures: int = Field(default=5, ge=1, description="give up after this many in the window")
    window_seconds: Seconds = 600.0
    backoff_initial_seconds: Seconds = 1.0
    backoff_max_seconds: Seconds = 60.0


class DrainSpec(_Model):
    grace_seconds: float = Field(default=30.0, ge=0, description="wait for in-flight requests")
    stop_timeout_seconds: Seconds = 10.0
    poll_interval_seconds: Seconds = 0.5


class LocalSpec(_Model):
    host: str = "127.0.0.1"
    base_port: Port = Field(default=8200, description="first replica port; 0 = any free port")


class ObjectiveSpec(_Model):
    name: str = Field(pattern=_DNS_LABEL, max_length=63)
    priority: int | None = None


class EPPSpec(_Model):
    service_name: str | None = Field(default=None, description="defaults to <pool>-epp")
    port: Port = 9002
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    image: str | None = None
    config: dict[str, Any] | None = Field(
        default=None, description="EndpointPickerConfig; a default one is generated when unset"
    )


class RouterSpec(_Model):
    pool_name: str | None = Field(default=None, pattern=_DNS_LABEL, max_length=63)
    target_port: Port = Field(default=8000, description="engine port inside pods")
    epp: EPPSpec = Field(default_factory=EPPSpec)
    objectives: list[ObjectiveSpec] = Field(default_factory=list)


class RoleGroup(_Model):
    """A second group of the same model, the prefill side of P/D disaggregation."""

    replicas: int = Field(default=1, ge=0)
    parallelism: Parallelism = Field(default_factory=Parallelism)
    resources: Resources = Field(default_factory=Resources)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class ModelServiceSpec(_Model):
    model: ModelSource
    loras: list[LoraAdapter] = Field(default_factory=list)
    max_loras: int | None = Field(default=None, ge=1)
    replicas: int = Field(default=1, ge=0)
    role: Role = "both"
    parallelism: Parallelism = Field(default_factory=Parallelism)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    kv_cache: KVCacheSpec = Field(default_factory=KVCacheSpec)
    resources: Resources = Field(default_factory=Resources)
    hardware: HardwareSelector = Field(default_factory=HardwareSelector)
    kv_events: KVEventsSpec = Field(default_factory=KVEventsSpec)
    kv_transfer: KVTransferSpec | None = None
    prefill: RoleGroup | None = Field(
        default=None, description="prefill group of P/D; the main group is then `decode`"
    )
    health: HealthSpec = Field(default_factory=HealthSpec)
    restart: RestartSpec = Field(default_factory=RestartSpec)
    drain: DrainSpec = Field(default_factory=DrainSpec)
    local: LocalSpec = Field(default_factory=LocalSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)


class ObjectMeta(_Model):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(pattern=_DNS_LABEL, max_length=63)
    namespace: str = Field(default="default", pattern=_DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


class ModelService(_Model):
    """A whole `ModelService` object as written in YAML or stored by the API server."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    api_version: Literal["llm-d.ai/v1alpha1"] = "llm-d.ai/v1alpha1"
    kind: Literal["ModelService"] = "ModelService"
    metadata: ObjectMeta
    spec: ModelServiceSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def served_names(self) -> list[str]:
        return self.spec.model.served_names or [self.metadata.name]

    @property
    def pool_name(self) -> str:
        return self.spec.router.pool_name or self.metadata.name

    def groups(self) -> list[RoleGroupView]:
        """The replica groups: the main one, then the prefill group of P/D."""
        s = self.spec
        main = RoleGroupView(
            role=s.role,
            replicas=s.replicas,
            parallelism=s.parallelism,
            resources=s.resources,
            extra_args=[],
            env={},
        )
        if s.prefill is None:
            return [main]
        p = s.prefill
        return [
            main,
            RoleGroupView(
                role="prefill",
                replicas=p.replicas,
                parallelism=p.parallelism,
                resources=p.resources,
                extra_args=list(p.extra_args),
                env=dict(p.env),
            ),
        ]


class RoleGroupView(BaseModel):
    """One group of replicas sharing role and parallelism (not part of the wire schema)."""

    model_config = ConfigDict(frozen=True)

    role: Role
    replicas: int
    parallelism: Parallelism
    resources: Resources
    extra_args: list[str]
    env: dict[str, str]

    @property
    def key(self) -> str:
        """'' for the single `both` group, else the role: used in replica and object names."""
        return "" if self.role == "both" else self.role
