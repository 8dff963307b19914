"""kvmanager's configuration: one YAML file, a few flags on top, validated with pydantic.

Bad input is reported as one line per problem naming the field (``models.0.block_size: ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from llmd_sdk.kvcache.hashing import HASH_ALGOS
from llmd_sdk.kvcache.index.memory import DEFAULT_CAPACITY
from llmd_sdk.kvcache.scorer import DEFAULT_TIER_WEIGHTS
from llmd_sdk.kvcache.topics import DEFAULT_TOPIC_PATTERN
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


class BackendConfig(_Strict):
    kind: Literal["memory", "redis"] = "memory"
    capacity: int = Field(
        default=DEFAULT_CAPACITY, gt=0, description="memory: distinct blocks kept"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "llmd:kv"


class KVManagerConfig(_Strict):
    host: str = "0.0.0.0"
    grpc_port: int = Field(default=9010, ge=0, le=65535)
    http_port: int = Field(default=9011, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = True
    backend: BackendConfig = Field(default_factory=lambda: BackendConfig())
    ingest: IngestConfig = Field(default_factory=lambda: IngestConfig())
    engines: list[EngineConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    # Score requests for models not listed, from token ids, with vLLM's default hashing.
    accept_unknown_models: bool = True
    tier_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TIER_WEIGHTS))

    @field_validator("tier_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for medium, w in v.items():
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"{medium}: must be within [0, 1], got {w}")
        return {k.upper(): w for k, w in v.items()}

    @model_validator(mode="after")
    def _unique(self) -> KVManagerConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: a model is listed twice")
        eps = [e.endpoint for e in self.engines]
        if len(set(eps)) != len(eps):
            raise ValueError("engines: an endpoint is listed twice")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


class ConfigError(ValueError):
    """Invalid configuration; the message is one line per problem, naming the field."""


def describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> KVManagerConfig:
    try:
        return KVManagerConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> KVManagerConfig:
    """Read `path` (YAML; None for defaults) and apply `overrides` (dotted keys allowed)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: {p} does not exist") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config: {p}{where} is not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {p} must hold a mapping")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(data)
