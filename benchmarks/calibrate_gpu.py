"""Calibrate vllm-sim's step-time model on a real GPU.

Builds a Llama-3.1-8B-shaped decoder (32 layers, hidden 4096, 32 query heads, 8 KV heads, MLP
14336, vocabulary 128256, RMSNorm, rotary embeddings, SwiGLU) with random bf16 weights and
``torch.nn.functional.scaled_dot_product_attention``, then times, with CUDA events after warm-up:

- prefill steps: one or several prompts of a grid of lengths (causal attention, logits for the
  last token of each prompt only, as vLLM computes them);
- decode steps: one token for each of a grid of batch sizes x context lengths, attending over a
  KV cache of that length (replayed from a CUDA graph, as vLLM runs decode).

It fits llmd_sim.latency's model by non-negative least squares on relative error::

    t = base_s + prefill_token_s*P + prefill_attn_pair_s*A + decode_seq_s*D + decode_ctx_token_s*C

and writes the raw measurements, the fit and its error (relative error of every point, mean and
max) as JSON. The file's ``profile`` member is a complete latency profile: vllm-sim reads the file
directly with ``--latency-profile``.

Run on one H100 (about 3-4 minutes):

    python benchmarks/calibrate_gpu.py --out benchmarks/data/h100-llama-3.1-8b.json

Smoke check anywhere (tiny model, CPU, seconds):

    python benchmarks/calibrate_gpu.py --device cpu --tiny --out /tmp/calib.json

Needs only torch, numpy and the standard library.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_bytes_per_token(self) -> int:  # bf16 K and V over all layers
        return 2 * self.num_layers * self.num_key_value_heads * self.head_dim * 2

    @property
    def num_params(self) -> int:
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_layers
        kv = self.num_key_value_heads * self.head_dim
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        return layers * per_layer + 2 * self.vocab_size * h + h


LLAMA_31_8B = Shape("Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256)
TINY = Shape("tiny", 2, 256, 4, 2, 512, 1024)

FULL_GRID = {
    "prefill_lens": [128, 256, 512, 1024, 2048, 4096, 8192],
    "prefill_multi": [[2, 512], [4, 512], [8, 256], [2, 2048], [4, 1024], [16, 128]],
    "decode_batches": [1, 4, 16, 32, 64, 128, 256],
    "decode_contexts": [128, 512, 1024, 2048, 4096, 8192],
    "max_decode_tokens": 262_144,  # batch x context cap (about 32 GiB of KV)
}
TINY_GRID = {
    "prefill_lens": [16, 32, 64, 128],
    "prefill_multi": [[2, 32], [4, 16]],
    "decode_batches": [1, 2, 4, 8],
    "decode_contexts": [16, 64, 128],
    "max_decode_tokens": 1024,
}

FEATURES = [
    "base_s",
    "prefill_token_s",
    "prefill_attn_pair_s",
    "decode_seq_s",
    "decode_ctx_token_s",
]


class Decoder(torch.nn.Module):
    """A Llama-style decoder with random weights (only the forward cost matters)."""

    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.shape = shape
        h, kv = shape.hidden_size, shape.num_key_value_heads * shape.head_dim

        def w(*size: int) -> torch.Tensor:
            t = torch.empty(*size, device=device, dtype=dtype)
            return t.normal_(0.0, 0.02)

        self.embed = w(shape.vocab_size, h)
        self.lm_head = w(shape.vocab_size, h)
        self.final_norm = torch.ones(h, device=device, dtype=dtype)
        self.layers = []
        for _ in range(shape.num_layers):
            self.layers.append(
                {
                    "ln1": torch.ones(h, device=device, dtype=dtype),
                    "ln2": torch.ones(h, device=device, dtype=dtype),
                    "q": w(h, h),
                    "k": w(kv, h),
                    "v": w(kv, h),
                    "o": w(h, h),
                    "gate": w(shape.intermediate_size, h),
                    "up": w(shape.intermediate_size, h),
                    "down": w(h, shape.intermediate_size),
                }
            )
        inv = 1.0 / (
            500000.0 ** (torch.arange(0, shape.head_dim, 2, device=device).float() / shape.head_dim)
        )
        self.register_buffer("inv_freq", inv, persistent=False)

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + 1e-5)).to(x.dtype) * weight

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    @staticmethod
    def _attend_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # GQA by repeating the (small, fresh) K/V heads keeps SDPA on its flash kernel.
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    @staticmethod
    def _attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # One query token per sequence: fold each KV head's group of query heads into the query
        # length, so every query head reads its KV head's cache once, with no copy of the cache.
        b, h, _, d = q.shape
        kvh = k.shape[1]
        out = F.scaled_dot_product_attention(q.view(b, kvh, h // kvh, d), k, v)
        return out.view(b, h, 1, d)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompts [B, L] from scratch; logits of each prompt's last token."""
        s = self.shape
        b, length = tokens.shape
        x = self.embed[tokens]
        pos = torch.arange(length, device=tokens.device)
        for p in self.layers:
            y = self._rms(x, p["ln1"])
            q = (y @ p["q"].T).view(b, length, s.num_attention_heads, s.head_dim)
            k = (y @ p["k"].T).view(b, length, s.num_key_value_heads, s.head_dim)
            v = (y @ p["v"].T).view(b, length, s.num_key_value_heads, s.head_dim)
            q, k = self._rope(q, pos[:, None]), self._rope(k, pos[:, None])
            a = self._attend_prefill(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x + a.transpose(1, 2).reshape(b, length, s.hidden_size) @ p["o"].T
            y = self._rms(x, p["ln2"])
            x = x + (F.silu(y @ p["gate"].T) * (y @ p["up"].T)) @ p["down"].T
        last = self._rms(x[:, -1, :], self.final_norm)
        return last @ self.lm_head.T

    def decode(
        self, tokens: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """One token per sequence [B] over caches [B, kv_heads, C + 1, head_dim].

        The new token's K/V is written into the last slot in place and attention reads the whole
        cache, as paged attention does (no copy of the cache). The same cache tensors serve every
        layer: each layer still streams a cache far larger than the GPU's L2 from memory, which
        is the cost being measured.
        """
        s = self.shape
        b = tokens.shape[0]
        ctx = k_cache.shape[2] - 1
        x = self.embed[tokens]
        pos = torch.full((1,), ctx, device=tokens.device)
        for p in self.layers:
            y = self._rms(x, p["ln1"])
            q = (y @ p["q"].T).view(b, 1, s.num_attention_heads, s.head_dim)
            k = (y @ p["k"].T).view(b, 1, s.num_key_value_heads, s.head_dim)
            q, k = self._rope(q, pos), self._rope(k, pos)
            v_new = (y @ p["v"].T).view(b, 1, s.num_key_value_heads, s.head_dim)
            k_cache[:, :, ctx:].copy_(k.transpose(1, 2))
            v_cache[:, :, ctx:].copy_(v_new.transpose(1, 2))
            a = self._attend_decode(q.transpose(1, 2), k_cache, v_cache)
            x = x + a.transpose(1, 2).reshape(b, s.hidden_size) @ p["o"].T
            y = self._rms(x, p["ln2"])
            x = x + (F.silu(y @ p["gate"].T) * (y @ p["up"].T)) @ p["down"].T
        return self._rms(x, self.final_norm) @ self.lm_head.T


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Any, warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        out: list[float] = []
        for _ in range(iters):
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return out


def graphed(fn: Any, device: torch.device) -> tuple[Any, bool]:
    """`fn` replayed from a CUDA graph when possible (vLLM runs decode that way)."""
    if device.type != "cuda":
        return fn, False
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, True
    except Exception as exc:
        print(f"  (CUDA graph capture failed, timing eagerly: {exc})", file=sys.stderr)
        return fn, False


def features(kind: str, batch: int, tokens: int, context: int) -> list[float]:
    if kind == "prefill":
        pairs = batch * tokens * (tokens + 1) // 2
        return [1.0, float(batch * tokens), float(pairs), 0.0, 0.0]
    return [1.0, 0.0, 0.0, float(batch), float(batch * (context + 1))]


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: minimise sum(((Xc - y) / y)^2)."""
    w = 1.0 / y
    a = x * w[:, None]
    b = y * w
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sol >= 0).all():
            coef[:] = 0.0
            coef[active] = sol
            return coef
        # Drop the most negative coefficient and refit the rest.
        active.pop(int(np.argmin(sol)))
    return coef


def fit(points: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    x = np.array([p["features"] for p in points], dtype=np.float64)
    y = np.array([p["median_s"] for p in points], dtype=np.float64)
    # Scale columns so lstsq is well conditioned, then undo the scaling.
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)
    coef = nnls_relative(x / scale, y) / scale
    pred = x @ coef
    rel = (pred - y) / y
    for p, r, pr in zip(points, rel, pred, strict=True):
        p["predicted_s"] = float(pr)
        p["relative_error"] = float(r)
    err: dict[str, Any] = {
        "mean_abs_relative_error": float(np.mean(np.abs(rel))),
        "max_abs_relative_error": float(np.max(np.abs(rel))),
    }
    for kind in ("prefill", "decode"):
        sel = np.array([p["kind"] == kind for p in points])
        if sel.any():
            err[kind] = {
                "points": int(sel.sum()),
                "mean_abs_relative_error": float(np.mean(np.abs(rel[sel]))),
                "max_abs_relative_error": float(np.max(np.abs(rel[sel]))),
            }
    return dict(zip(FEATURES, map(float, coef), strict=True)), err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and grid (smoke check)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop measuring after this")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="time decode eagerly")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("calibrate_gpu: error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    shape = TINY if args.tiny else LLAMA_31_8B
    grid = TINY_GRID if args.tiny else FULL_GRID
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)  # thread hand-offs on a shared CPU make timings noisy
    if args.tiny:
        args.warmup, args.iters = min(args.warmup, 1), min(args.iters, 3)
    t_start = time.monotonic()
    torch.manual_seed(0)
    with torch.inference_mode():
        model = Decoder(shape, device, dtype)
    timer = Timer(device)
    points: list[dict[str, Any]] = []

    def over_budget() -> bool:
        return time.monotonic() - t_start > args.budget_s

    print(f"model {shape.name}: {shape.num_params / 1e9:.2f}B params, {dtype}, {device}")
    prefill_cases = [(1, n) for n in grid["prefill_lens"]] + [
        tuple(c) for c in grid["prefill_multi"]
    ]
    for batch, length in prefill_cases:
        if over_budget():
            print("  budget reached: skipping the rest of the prefill grid")
            break
        tokens = torch.randint(0, shape.vocab_size, (batch, length), device=device)
        with torch.inference_mode():
            samples = timer.time(lambda t=tokens: model.prefill(t), args.warmup, args.iters)
        med = statistics.median(samples)
        points.append(
            {"kind": "prefill", "batch": batch, "tokens": length, "context": 0,
             "features": features("prefill", batch, length, 0), "median_s": med,
             "samples_s": samples}
        )  # fmt: skip
        print(f"  prefill {batch:>3} x {length:>5} tokens: {med * 1e3:9.3f} ms")
        del tokens
    kv_heads, hd = shape.num_key_value_heads, shape.head_dim
    use_graphs = not args.no_cuda_graphs
    for batch in grid["decode_batches"]:
        for ctx in grid["decode_contexts"]:
            if batch * ctx > grid["max_decode_tokens"]:
                continue
            if over_budget():
                break
            k_cache = torch.randn(batch, kv_heads, ctx + 1, hd, device=device, dtype=dtype)
            v_cache = torch.randn(batch, kv_heads, ctx + 1, hd, device=device, dtype=dtype)
            tokens = torch.randint(0, shape.vocab_size, (batch,), device=device)
            with torch.inference_mode():

                def step(
                    t: torch.Tensor = tokens,
                    kc: torch.Tensor = k_cache,
                    vc: torch.Tensor = v_cache,
                ) -> None:
                    model.decode(t, kc, vc)

                fn, is_graph = graphed(step, device) if use_graphs else (step, False)
                samples = timer.time(fn, args.warmup, args.iters)
            med = statistics.median(samples)
            points.append(
                {"kind": "decode", "batch": batch, "tokens": batch, "context": ctx,
                 "features": features("decode", batch, 1, ctx), "median_s": med,
                 "samples_s": samples, "cuda_graph": is_graph}
            )  # fmt: skip
            print(f"  decode  {batch:>3} seqs x {ctx:>5} ctx: {med * 1e3:9.3f} ms")
            del k_cache, v_cache, fn, step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if len(points) < len(FEATURES):
        print("calibrate_gpu: error: too few points measured to fit", file=sys.stderr)
        return 1
    coefficients, error = fit(points)

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    num_gpu_blocks = 28000
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        weights = shape.num_params * 2
        num_gpu_blocks = max(
            2, int((0.9 * total - weights - 2 * 2**30) // (16 * shape.kv_bytes_per_token))
        )
    name = f"{'h100' if 'H100' in device_name else device.type}-{shape.name.lower()}"
    profile = {
        "name": name,
        "provisional": bool(args.tiny or device.type != "cuda"),
        "source": (
            f"benchmarks/calibrate_gpu.py on {device_name}, torch {torch.__version__}, "
            f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; "
            f"{len(points)} timed steps, mean |relative error| "
            f"{error['mean_abs_relative_error']:.3f}"
        ),
        "hardware": device_name,
        "model": {**asdict(shape), "dtype": str(dtype).removeprefix("torch.")},
        "coefficients": coefficients,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "kv_transfer_bytes_per_s": 25e9,
        "kv_transfer_base_s": 0.001,
        "cpu_load_bytes_per_s": 25e9,
        "num_gpu_blocks": num_gpu_blocks,
    }
    doc = {
        "schema": "llmd-sim/calibration/v1",
        "profile": profile,
        "fit": {
            "model": "t = "
            + " + ".join(
                f"{k}*{f}" for k, f in zip(FEATURES, ["1", "P", "A", "D", "C"], strict=True)
            ),
            "method": "non-negative least squares on relative error",
            "coefficients": coefficients,
        },
        "fit_error": error,
        "measurements": points,
        "environment": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": device_name,
            "python": platform.python_version(),
            "argv": sys.argv[1:] if argv is None else argv,
            "elapsed_s": time.monotonic() - t_start,
            "warmup": args.warmup,
            "iters": args.iters,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print("fit:", ", ".join(f"{k}={v:.4g}" for k, v in coefficients.items()))
    print(
        f"fit error: mean |rel| {error['mean_abs_relative_error']:.3f}, "
        f"max |rel| {error['max_abs_relative_error']:.3f} over {len(points)} points"
    )
    print(f"wrote {out} in {time.monotonic() - t_start:.1f}s")
    return 0 if all(math.isfinite(v) for v in coefficients.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
