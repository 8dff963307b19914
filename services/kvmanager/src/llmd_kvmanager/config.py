"""kvmanager's settings (`llmd_sdk.settings`): flags > ``LLMD_KVMANAGER_*`` env > YAML > defaults.

Bad input is reported as one line per problem naming the field (``models.0.block_size: ...``).
Flags follow the fields: ``--grpc-port``, ``--ingest.bind``, ``--backend.kind``, ... plus the
``--engine ENDPOINT=ZMQ[,MODEL[,REPLAY]]`` shorthand, repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llmd_sdk.kvcache.hashing import HASH_ALGOS
from llmd_sdk.kvcache.index.memory import DEFAULT_CAPACITY
from llmd_sdk.kvcache.scorer import DEFAULT_TIER_WEIGHTS
from llmd_sdk.kvcache.topics import DEFAULT_TOPIC_PATTERN
from llmd_sdk.settings import (
    ServiceSettings,
    SettingsConfigDict,
    SettingsError,
    format_validation_error,
    load_settings,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """How one model's engines hash their blocks, and how to tokenize its requests."""

    name: str = Field(min_length=1)
    # Directory holding tokenizer.json (+ tokenizer_config.json), or the file; None: token ids
    # only (unless `builtin_tokenizer`).
    tokenizer: str | None = None
    builtin_tokenizer: bool = False
    chat_template: str | None = None
    # vLLM's --prefix-caching-hash-algo, PYTHONHASHSEED of the engines, --block-size.
    hash_algo: str = "sha256"
    hash_seed: str | None = None
    block_size: int = Field(default=16, gt=0)
    extra_key_style: Literal["tagged", "plain"] = "tagged"
    # LoRA adapter name -> the path the engines loaded it from (it enters the block hashes).
    loras: dict[str, str | None] = Field(default_factory=dict)

    @field_validator("hash_algo")
    @classmethod
    def _algo(cls, v: str) -> str:
        if v not in HASH_ALGOS:
            raise ValueError(f"must be one of {', '.join(HASH_ALGOS)}")
        return v


class EngineConfig(_Strict):
    """An engine whose publisher binds (vLLM's default ``tcp://*:5557``): we connect to it."""

    endpoint: str = Field(min_length=3, description="serving address ip:port, as the EPP routes")
    zmq: str = Field(description="its KV-event PUB socket, e.g. tcp://10.0.0.7:5557")
    model: str | None = None
    replay: str | None = Field(
        default=None, description="its replay ROUTER socket, e.g. tcp://...:5558"
    )
    topic: str | None = None

    @field_validator("zmq", "replay")
    @classmethod
    def _zmq(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"{v!r} is not a ZMQ address like tcp://host:port")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{v!r} is not host:port")
        return v


class IngestConfig(_Strict):
    # Bind one SUB socket that engines connect to (vLLM endpoint tcp://kvmanager:5557).
    bind: str | None = None
    # Also bind the next ports, for data-parallel engines (rank r connects to the port + r).
    bind_ranks: int = Field(default=1, ge=1, le=1024)
    topic_filter: str = "kv@"
    topic_pattern: str = DEFAULT_TOPIC_PATTERN
    # Replay sockets of engines that connect to `bind`, by endpoint.
    replay: dict[str, str] = Field(default_factory=dict)
    shards: int = Field(default=4, gt=0)
    queue_size: int = Field(default=4096, gt=0)
    replay_timeout_s: float = Field(default=2.0, gt=0)
    rcvhwm: int = Field(default=100_000, ge=0)
    # Accept publishers that are not listed in `engines` (engines connecting to `bind`).
    open_pool: bool = True


class PoolConfig(_Strict):
    # modelservice's API (e.g. http://127.0.0.1:8090): follow its endpoint watch for membership.
    modelservice_url: str | None = None
    # Only this ModelService's endpoints (its name), or all.
    model: str | None = None


class BackendConfig(_Strict):
    kind: Literal["memory", "redis"] = "memory"
    capacity: int = Field(
        default=DEFAULT_CAPACITY, gt=0, description="memory: distinct blocks kept"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "llmd:kv"


class KVManagerConfig(ServiceSettings):
    """Settings: flags > ``LLMD_KVMANAGER_*`` environment > YAML (``--config``) > defaults."""

    model_config = SettingsConfigDict(env_prefix="LLMD_KVMANAGER_")

    host: str = "0.0.0.0"
    """Listen address of both servers."""
    grpc_port: int = Field(default=9010, ge=0, le=65535)
    """KVIndex gRPC port."""
    http_port: int = Field(default=9011, ge=0, le=65535)
    """Health, metrics and pool-membership HTTP port."""
    log_level: str = "INFO"
    log_json: bool = True
    backend: BackendConfig = Field(default_factory=lambda: BackendConfig())
    ingest: IngestConfig = Field(default_factory=lambda: IngestConfig())
    engines: list[EngineConfig] = Field(default_factory=list)
    """Engines whose publishers bind; we connect to each."""
    pool: PoolConfig = Field(default_factory=lambda: PoolConfig())
    """Pool membership from modelservice's watch (in addition to `engines`)."""
    models: list[ModelConfig] = Field(default_factory=list)
    accept_unknown_models: bool = True
    """Score models not listed, from token ids, with vLLM's default hashing."""
    tier_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TIER_WEIGHTS))
    """Weight of a matched block per medium (GPU, CPU, STORAGE)."""

    @field_validator("tier_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for medium, w in v.items():
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"every weight must be within [0, 1] ({medium} has {w})")
        return {k.upper(): w for k, w in v.items()}

    @model_validator(mode="after")
    def _unique(self) -> KVManagerConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: a model is listed twice")
        socks = [e.zmq for e in self.engines]
        if len(set(socks)) != len(socks):
            raise ValueError("engines: a zmq address is listed twice")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def config_from(data: dict[str, Any]) -> KVManagerConfig:
    """Settings from a mapping only (no flags, environment or file): tests and embedding."""
    try:
        return KVManagerConfig.model_validate(data)
    except ValidationError as err:
        raise SettingsError(format_validation_error(err, KVManagerConfig)) from None


def parse_engine_flag(raw: str) -> EngineConfig:
    """``ENDPOINT=ZMQ[,MODEL[,REPLAY]]``, the ``--engine`` shorthand."""
    endpoint, sep, rest = raw.partition("=")
    if not sep:
        raise SettingsError([f"--engine: expected ENDPOINT=ZMQ[,MODEL[,REPLAY]] (got {raw})"])
    parts = rest.split(",")
    data: dict[str, Any] = {"endpoint": endpoint, "zmq": parts[0]}
    if len(parts) > 1 and parts[1]:
        data["model"] = parts[1]
    if len(parts) > 2 and parts[2]:
        data["replay"] = parts[2]
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as err:
        raise SettingsError(
            [f"--engine {line}" for line in format_validation_error(err, EngineConfig)]
        ) from None


def load_config(
    argv: Sequence[str] | None = None, yaml_path: str | Path | None = None
) -> KVManagerConfig:
    """Settings from flags (`argv`, with any number of ``--engine`` shorthands), the
    environment and YAML. Raises `SettingsError` (one line per problem)."""
    rest: list[str] = []
    engines: list[EngineConfig] = []
    items = iter(argv or [])
    for arg in items:
        if arg == "--engine":
            value = next(items, None)
            if value is None:
                raise SettingsError(["--engine: expected ENDPOINT=ZMQ[,MODEL[,REPLAY]]"])
            engines.append(parse_engine_flag(value))
        elif arg.startswith("--engine="):
            engines.append(parse_engine_flag(arg.split("=", 1)[1]))
        else:
            rest.append(arg)
    cfg = load_settings(KVManagerConfig, rest if argv is not None else None, yaml_path,
                        prog="llmd-kvmanager")  # fmt: skip
    if engines:
        data = cfg.model_dump()
        data["engines"] = data["engines"] + [e.model_dump() for e in engines]
        cfg = config_from(data)
    return cfg
