"""The step-time model: how long one engine iteration takes on real hardware.

One step computes some prefill tokens (chunks of prompts) and one token for each decoding
sequence. Its time is modelled as linear in five features:

    t = base_s
        + prefill_token_s     * P    (prefill tokens: the GEMMs of the prompt chunks)
        + prefill_attn_pair_s * A    (causal attention pairs of the chunks: sum n*start + n(n+1)/2)
        + decode_seq_s        * D    (decoding sequences in the batch)
        + decode_ctx_token_s  * C    (KV tokens the decoding sequences attend over)

``base_s`` is the weight read and launch overhead a step pays whatever it does. The coefficients
are fitted by ``benchmarks/calibrate_gpu.py`` (least squares over timed prefill and decode steps
of a Llama-3.1-8B-shaped decoder) and stored as a JSON profile; `load_profile` reads either a bare
profile or the calibration output that contains one. Transfers (P/D KV pull, CPU-tier loads) are
charged per byte from the profile's bandwidths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILES_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE_PATH = PROFILES_DIR / "h100-llama-3.1-8b.json"


class Coefficients(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_s: float = Field(ge=0)
    prefill_token_s: float = Field(ge=0)
    prefill_attn_pair_s: float = Field(ge=0)
    decode_seq_s: float = Field(ge=0)
    decode_ctx_token_s: float = Field(ge=0)


class LatencyProfile(BaseModel):
    """A model-size x hardware profile (the JSON file ``--latency-profile`` reads)."""

    model_config = ConfigDict(extra="allow")

    name: str
    provisional: bool = False
    source: str = ""
    coefficients: Coefficients
    # KV bytes per token (all layers, K and V): Llama-3.1-8B bf16 = 2*32*8*128*2 = 131072.
    kv_bytes_per_token: int = Field(default=131072, gt=0)
    kv_transfer_bytes_per_s: float = Field(default=25e9, gt=0)
    kv_transfer_base_s: float = Field(default=0.001, ge=0)
    cpu_load_bytes_per_s: float = Field(default=25e9, gt=0)
    num_gpu_blocks: int = Field(default=28000, ge=2)


class LatencyModel:
    """Evaluates a `LatencyProfile`, scaled by `scale` (0 = no model latency)."""

    __slots__ = (
        "attn",
        "base",
        "cpu_bps",
        "ctx",
        "kv_bytes_per_token",
        "prefill",
        "profile",
        "scale",
        "seq",
        "xfer_base",
        "xfer_bps",
    )

    def __init__(self, profile: LatencyProfile, scale: float = 1.0) -> None:
        if scale < 0:
            raise ValueError(f"time_scale: must be >= 0, got {scale}")
        c = profile.coefficients
        self.profile = profile
        self.scale = scale
        self.base = c.base_s * scale
        self.prefill = c.prefill_token_s * scale
        self.attn = c.prefill_attn_pair_s * scale
        self.seq = c.decode_seq_s * scale
        self.ctx = c.decode_ctx_token_s * scale
        self.kv_bytes_per_token = profile.kv_bytes_per_token
        self.xfer_bps = profile.kv_transfer_bytes_per_s
        self.xfer_base = profile.kv_transfer_base_s * scale
        self.cpu_bps = profile.cpu_load_bytes_per_s

    def step_time(
        self, prefill_tokens: int, attn_pairs: int, decode_seqs: int, decode_ctx_tokens: int
    ) -> float:
        if not prefill_tokens and not decode_seqs:
            return 0.0
        return (
            self.base
            + self.prefill * prefill_tokens
            + self.attn * attn_pairs
            + self.seq * decode_seqs
            + self.ctx * decode_ctx_tokens
        )

    def kv_transfer_time(self, num_blocks: int, block_size: int) -> float:
        """Time to pull `num_blocks` KV blocks from a prefill engine (P/D)."""
        nbytes = num_blocks * block_size * self.kv_bytes_per_token
        return self.xfer_base + self.scale * nbytes / self.xfer_bps

    def cpu_load_time(self, num_blocks: int, block_size: int) -> float:
        """Time to copy `num_blocks` blocks back from the CPU tier."""
        return self.scale * num_blocks * block_size * self.kv_bytes_per_token / self.cpu_bps

    def kv_block_bytes(self, block_size: int) -> int:
        return block_size * self.kv_bytes_per_token


def profile_from_dict(data: dict[str, Any], origin: str = "latency profile") -> LatencyProfile:
    """Validate a profile, or the ``profile`` member of a calibration output."""
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):
        data = data["profile"]
    try:
        return LatencyProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ValueError(f"{origin}: {where}: {err['msg']}") from None


def load_profile(path: str | Path | None = None) -> LatencyProfile:
    """Read a profile JSON file (the packaged default when `path` is None)."""
    p = DEFAULT_PROFILE_PATH if path is None else Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"latency_profile: no such file {p}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"latency_profile: {p} is not valid JSON ({exc.msg})") from None
    return profile_from_dict(data, origin=f"latency_profile {p.name}")


def zero_profile() -> LatencyProfile:
    """A profile where every step takes no time (pure scheduling, e.g. API tests)."""
    return LatencyProfile(
        name="zero",
        coefficients=Coefficients(
            base_s=0, prefill_token_s=0, prefill_attn_pair_s=0, decode_seq_s=0, decode_ctx_token_s=0
        ),
        kv_transfer_base_s=0,
    )
