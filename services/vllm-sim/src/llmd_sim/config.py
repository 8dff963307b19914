"""Command-line configuration, spelled as ``vllm serve`` spells its flags.

Flags vLLM has keep vLLM's names and defaults (``--model``, ``--served-model-name``, ``--port``,
``--max-num-seqs``, ``--max-num-batched-tokens``, ``--max-model-len``, ``--block-size``,
``--num-gpu-blocks-override``, ``--prefix-caching-hash-algo``, ``--kv-events-config``,
``--data-parallel-size``, ``--kv-transfer-config``, ``--enable-lora``, ``--lora-modules``,
``--max-loras``, ``--tokenizer``, ``--chat-template``, ``--kv-offloading-size``). Flags only the
simulator has: ``--mode``, ``--latency-profile``, ``--time-scale``, ``--failure-rate``,
``--failure-kinds``, ``--stall-seconds``, ``--log-format``.

`parse_args` returns a validated `SimConfig`; a bad value is one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmd_sdk.kvcache.hashing import HASH_ALGOS
from llmd_sdk.openai import json_type_name

FailureKind = Literal["http500", "http429", "stall", "crash"]
FAILURE_KINDS: tuple[str, ...] = ("http500", "http429", "stall", "crash")


class ConfigError(ValueError):
    """A bad flag value: the message names the flag."""


@dataclass(slots=True)
class KVEventsConfig:
    """vLLM's ``KVEventsConfig`` (the JSON of ``--kv-events-config``)."""

    enable_kv_cache_events: bool = False
    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


@dataclass(slots=True)
class KVTransferConfig:
    """The part of vLLM's ``KVTransferConfig`` the simulator honours (P/D with NIXL)."""

    kv_connector: str | None = None
    kv_role: str | None = None
    engine_id: str | None = None
    kv_connector_extra_config: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.kv_connector)


@dataclass(slots=True)
class LoRAModule:
    name: str
    path: str
    base_model_name: str | None = None


@dataclass(slots=True)
class SimConfig:
    model: str = "llmd-sim"
    served_model_name: list[str] = field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8000
    tokenizer: str | None = None
    chat_template: str | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    prefix_caching_hash_algo: str = "sha256"
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    kv_transfer: KVTransferConfig = field(default_factory=KVTransferConfig)
    data_parallel_size: int = 1
    enable_lora: bool = False
    lora_modules: list[LoRAModule] = field(default_factory=list)
    max_loras: int = 1
    kv_offloading_size: float = 0.0
    seed: int = 0
    mode: str = "random"
    latency_profile: str | None = None
    time_scale: float = 1.0
    failure_rate: float = 0.0
    failure_kinds: list[str] = field(default_factory=lambda: ["http500"])
    stall_seconds: float = 3600.0
    log_level: str = "info"
    log_format: str = "json"
    use_int_block_hashes: bool = False

    @property
    def model_name(self) -> str:
        """The name requests must use and metrics carry (first served name, else --model)."""
        return self.served_model_name[0] if self.served_model_name else self.model

    @property
    def model_names(self) -> list[str]:
        return self.served_model_name or [self.model]


def _json_arg(flag: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: must be a JSON object")
    return value


def _dataclass_from(flag: str, cls: type[Any], data: dict[str, Any]) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{flag}: unknown field {unknown[0]!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


# JSON types of the config fields we read: a value of another type would otherwise surface later
# as a traceback from zmq or the queue (vLLM's pydantic config rejects it at startup too).
_BOOL, _INT, _STR, _OPT_STR, _OBJECT = (
    "a boolean",
    "an integer",
    "a string",
    "a string or null",
    "an object",
)
_KV_EVENTS_TYPES = {
    "enable_kv_cache_events": _BOOL,
    "publisher": _STR,
    "endpoint": _STR,
    "replay_endpoint": _OPT_STR,
    "buffer_steps": _INT,
    "hwm": _INT,
    "max_queue_size": _INT,
    "topic": _STR,
}
_KV_TRANSFER_TYPES = {
    "kv_connector": _OPT_STR,
    "kv_role": _OPT_STR,
    "engine_id": _OPT_STR,
    "kv_connector_extra_config": _OBJECT,
}


def _check_types(flag: str, data: dict[str, Any], types: dict[str, str]) -> None:
    """Each known field has its JSON type; integers are >= 0. Raises ConfigError naming it."""
    for name, want in types.items():
        if name not in data:
            continue
        value = data[name]
        ok = {
            _BOOL: isinstance(value, bool),
            _INT: isinstance(value, int) and not isinstance(value, bool),
            _STR: isinstance(value, str),
            _OPT_STR: value is None or isinstance(value, str),
            _OBJECT: isinstance(value, dict),
        }[want]
        if not ok:
            raise ConfigError(f"{flag}: {name} must be {want}, got {json_type_name(value)}")
        if want == _INT and value < 0:
            raise ConfigError(f"{flag}: {name} must be >= 0, got {value}")


def parse_kv_events(raw: str | None) -> KVEventsConfig:
    if not raw:
        return KVEventsConfig()
    data = _json_arg("--kv-events-config", raw)
    _check_types("--kv-events-config", data, _KV_EVENTS_TYPES)
    if data.get("enable_kv_cache_events") and "publisher" not in data:
        data["publisher"] = "zmq"  # vLLM picks zmq when events are enabled
    cfg: KVEventsConfig = _dataclass_from("--kv-events-config", KVEventsConfig, data)
    if cfg.publisher not in ("null", "zmq"):
        raise ConfigError(f"--kv-events-config: publisher {cfg.publisher!r} is not 'zmq' or 'null'")
    if cfg.enabled and not cfg.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"--kv-events-config: endpoint {cfg.endpoint!r} is not a ZMQ address")
    return cfg


def parse_kv_transfer(raw: str | None) -> KVTransferConfig:
    if not raw:
        return KVTransferConfig()
    data = _json_arg("--kv-transfer-config", raw)
    # vLLM's config has many more fields; keep the ones we read, ignore the rest.
    keep = {k: data[k] for k in KVTransferConfig.__dataclass_fields__ if k in data}
    _check_types("--kv-transfer-config", keep, _KV_TRANSFER_TYPES)
    cfg: KVTransferConfig = _dataclass_from("--kv-transfer-config", KVTransferConfig, keep)
    return cfg


def parse_lora_module(raw: str) -> LoRAModule:
    """``name=path`` or the JSON form ``{"name": ..., "path": ..., "base_model_name": ...}``."""
    raw = raw.strip()
    if raw.startswith("{"):
        data = _json_arg("--lora-modules", raw)
        if not isinstance(data.get("name"), str) or not isinstance(data.get("path"), str):
            raise ConfigError("--lora-modules: JSON form needs string 'name' and 'path'")
        return LoRAModule(data["name"], data["path"], data.get("base_model_name"))
    name, sep, path = raw.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--lora-modules: {raw!r} is not name=path")
    return LoRAModule(name, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmd-sim",
        description="A vLLM-compatible engine simulator (OpenAI API, vLLM metrics, KV events).",
        allow_abbrev=False,
    )
    add = p.add_argument
    add("model_tag", nargs="?", default=None, help="model, as `vllm serve MODEL` takes it")
    add("--model", default=None, help="model name or local directory (default llmd-sim)")
    add("--served-model-name", nargs="+", default=None, help="names the API serves")
    add("--host", default="0.0.0.0")
    add("--port", type=int, default=8000)
    add("--tokenizer", default=None, help="HF tokenizer directory or tokenizer.json")
    add("--chat-template", default=None, help="Jinja chat template (file or inline)")
    add("--max-num-seqs", type=int, default=256)
    add("--max-num-batched-tokens", type=int, default=8192)
    add("--max-model-len", type=int, default=131072)
    add("--block-size", type=int, default=16)
    add("--num-gpu-blocks-override", type=int, default=None)
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    add("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    add("--prefix-caching-hash-algo", default="sha256", choices=HASH_ALGOS)
    add("--kv-events-config", default=None, help="vLLM KVEventsConfig JSON")
    add("--kv-transfer-config", default=None, help="vLLM KVTransferConfig JSON (P/D)")
    add("--data-parallel-size", "-dp", type=int, default=1)
    add("--enable-lora", action="store_true")
    add("--lora-modules", nargs="+", default=[], help="name=path or JSON, repeatable")
    add("--max-loras", type=int, default=1)
    add("--max-lora-rank", type=int, default=16, help="accepted for compatibility")
    add("--max-cpu-loras", type=int, default=None, help="accepted for compatibility")
    add("--kv-offloading-size", type=float, default=0.0, help="CPU KV tier size in GiB")
    add("--seed", type=int, default=0)
    add("--enable-prompt-tokens-details", action="store_true", help="always on in the simulator")
    add("--disable-log-requests", action="store_true", help="accepted for compatibility")
    add("--uvicorn-log-level", default=None)
    add("--gpu-memory-utilization", type=float, default=0.9, help="accepted for compatibility")
    add("--tensor-parallel-size", "-tp", type=int, default=1, help="reported in P/D params")
    sim = p.add_argument_group("simulator")
    sim.add_argument("--mode", choices=("echo", "random"), default="random")
    sim.add_argument("--latency-profile", default=None, help="latency profile JSON")
    sim.add_argument("--time-scale", type=float, default=1.0, help="0 = no model latency")
    sim.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests")
    sim.add_argument(
        "--failure-kinds", nargs="+", default=["http500"], choices=FAILURE_KINDS, metavar="KIND"
    )
    sim.add_argument("--stall-seconds", type=float, default=3600.0)
    sim.add_argument("--log-level", default="info")
    sim.add_argument("--log-format", choices=("json", "console"), default="json")
    return p


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"--{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    model = ns.model or ns.model_tag or "llmd-sim"
    cfg = SimConfig(
        model=model,
        served_model_name=list(ns.served_model_name or []),
        host=ns.host,
        port=ns.port,
        tokenizer=ns.tokenizer,
        chat_template=ns.chat_template,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_model_len=ns.max_model_len,
        block_size=ns.block_size,
        num_gpu_blocks_override=ns.num_gpu_blocks_override,
        enable_prefix_caching=ns.enable_prefix_caching,
        enable_chunked_prefill=ns.enable_chunked_prefill,
        prefix_caching_hash_algo=ns.prefix_caching_hash_algo,
        kv_events=parse_kv_events(ns.kv_events_config),
        kv_transfer=parse_kv_transfer(ns.kv_transfer_config),
        data_parallel_size=ns.data_parallel_size,
        enable_lora=ns.enable_lora or bool(ns.lora_modules),
        lora_modules=[parse_lora_module(m) for m in ns.lora_modules],
        max_loras=ns.max_loras,
        kv_offloading_size=ns.kv_offloading_size,
        seed=ns.seed,
        mode=ns.mode,
        latency_profile=ns.latency_profile,
        time_scale=ns.time_scale,
        failure_rate=ns.failure_rate,
        failure_kinds=list(ns.failure_kinds),
        stall_seconds=ns.stall_seconds,
        log_level=ns.log_level,
        log_format=ns.log_format,
        use_int_block_hashes=os.environ.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "0").lower()
        in ("1", "true", "yes"),
    )
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port: {cfg.port} is not a TCP port")
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
        _positive(name.replace("_", "-"), getattr(cfg, name))
    for name in ("data_parallel_size", "max_loras"):
        _positive(name.replace("_", "-"), getattr(cfg, name))
    if cfg.num_gpu_blocks_override is not None and cfg.num_gpu_blocks_override < 2:
        raise ConfigError("--num-gpu-blocks-override: must be at least 2")
    if cfg.max_num_batched_tokens < cfg.max_num_seqs:
        raise ConfigError(
            f"--max-num-batched-tokens: ({cfg.max_num_batched_tokens}) must be greater than or "
            f"equal to --max-num-seqs ({cfg.max_num_seqs})"
        )
    _positive("time-scale", cfg.time_scale, allow_zero=True)
    _positive("kv-offloading-size", cfg.kv_offloading_size, allow_zero=True)
    if not 0.0 <= cfg.failure_rate <= 1.0:
        raise ConfigError(f"--failure-rate: must be within [0, 1], got {cfg.failure_rate}")
    if cfg.latency_profile and not Path(cfg.latency_profile).is_file():
        raise ConfigError(f"--latency-profile: no such file {cfg.latency_profile}")
    return cfg


def parse_args(argv: list[str] | None = None) -> SimConfig:
    return config_from_args(build_parser().parse_args(argv))
