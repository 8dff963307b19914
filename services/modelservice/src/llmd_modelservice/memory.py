"""Does a model fit a device? Weights per tensor-parallel shard plus the KV budget, in one line.

Pure arithmetic, no I/O. `auto` dtype is counted as 2 bytes (bf16/fp16 checkpoints, the usual
case); an explicit `model.dtype` is exact. With expert parallelism the weights are still counted
per tensor shard only, which over-estimates MoE memory: the check errs on the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmd_modelservice.spec import ModelServiceSpec

GIB = 1024**3
KIB = 1024

DTYPE_BYTES = {
    "auto": 2.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "half": 2.0,
    "float32": 4.0,
    "float": 4.0,
    "fp8": 1.0,
}
KV_DTYPE_BYTES = {"bfloat16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _count(n: int) -> str:
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


@dataclass(frozen=True)
class FitReport:
    """The arithmetic of one memory check; `line` is what users read."""

    weights_bytes: float
    kv_bytes: float
    capacity_bytes: float
    fits: bool
    line: str

    @property
    def need_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes


def weights_per_device(spec: ModelServiceSpec, tensor: int) -> tuple[float, str] | None:
    params = spec.model.parameter_count
    if params is None:
        return None
    dtype = spec.model.dtype
    nbytes = DTYPE_BYTES[dtype]
    value = params * nbytes / tensor
    label = "auto=2 B" if dtype == "auto" else f"{nbytes:g} B"
    text = f"weights {_count(params)} params x {label} ({dtype}) / TP {tensor} = {_gib(value)}"
    return value, text


def kv_bytes_per_token(spec: ModelServiceSpec, tensor: int) -> float | None:
    """K and V of every layer for one token on one tensor shard (None without architecture)."""
    arch = spec.model.architecture
    if arch is None:
        return None
    kv_dtype = spec.kv_cache.dtype
    nbytes = (
        KV_DTYPE_BYTES[kv_dtype] if kv_dtype != "auto" else DTYPE_BYTES.get(spec.model.dtype, 2.0)
    )
    heads = -(-arch.num_kv_heads // tensor)  # KV heads shard over TP, replicated below one each
    return 2 * arch.num_layers * heads * arch.head_dim * nbytes


def kv_budget_per_device(spec: ModelServiceSpec, tensor: int) -> tuple[float, str] | None:
    kv = spec.kv_cache
    derived: tuple[float, str] | None = None
    per_token = kv_bytes_per_token(spec, tensor)
    if per_token is not None and spec.model.max_model_len:
        value = per_token * spec.model.max_model_len * kv.sequences
        derived = (
            value,
            f"KV {kv.sequences} seq x {spec.model.max_model_len} tokens x "
            f"{per_token / KIB:.1f} KiB/token = {_gib(value)}",
        )
    explicit = None
    if kv.budget_gib is not None:
        explicit = (kv.budget_gib * GIB, f"KV budget {kv.budget_gib:g} GiB")
    candidates = [c for c in (derived, explicit) if c is not None]
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])


def check_device_fit(
    spec: ModelServiceSpec,
    *,
    model_name: str,
    tensor: int,
    device_bytes: int,
    device_label: str,
    utilization: float,
) -> FitReport | None:
    """Weights per shard + KV budget against `device_bytes x utilization`; None when unknown."""
    weights = weights_per_device(spec, tensor)
    kv = kv_budget_per_device(spec, tensor)
    if weights is None and kv is None:
        return None
    w_value, w_text = weights if weights is not None else (0.0, "weights unknown")
    k_value, k_text = kv if kv is not None else (0.0, "KV budget 0")
    capacity = device_bytes * utilization
    need = w_value + k_value
    fits = need <= capacity
    op = "<=" if fits else ">"
    line = (
        f"model {model_name!r} on {device_label}: {w_text} + {k_text} = {_gib(need)} {op} "
        f"{utilization:g} x {_gib(device_bytes)} = {_gib(capacity)}"
    )
    if not fits:
        line = f"does not fit: {line}"
    return FitReport(w_value, k_value, capacity, fits, line)
