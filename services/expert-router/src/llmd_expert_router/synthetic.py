"""Synthetic skewed expert loads for tests, benchmarks and the simulator.

Expert popularity in each layer follows a Zipf law (the ``i``-th most popular expert is chosen
with weight ``1 / i**exponent``), with an independent random ranking per layer. Each token picks
``top_k`` *distinct* experts, sampled without replacement by the Gumbel-top-k trick, which is how
a router's top-k over noisy logits behaves. The result is a ``[L, E]`` count of token assignments.
"""

from __future__ import annotations

import numpy as np

from llmd_expert_router.placement import IntArray


def zipf_popularity(num_experts: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised Zipf weights assigned to experts in a random order."""
    weights = 1.0 / np.arange(1, num_experts + 1, dtype=np.float64) ** exponent
    return rng.permutation(weights / weights.sum())


def zipf_topk(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    exponent: float,
    rng: np.random.Generator,
    popularity: np.ndarray | None = None,
) -> IntArray:
    """``[T, k]`` distinct expert ids per token drawn from a Zipf popularity."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k: must lie in [1, {num_experts}], got {top_k}")
    pop = zipf_popularity(num_experts, exponent, rng) if popularity is None else popularity
    keys = np.log(pop)[None, :] + rng.gumbel(size=(num_tokens, num_experts))
    top = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
    return top.astype(np.int64)


def zipf_windows(
    num_layers: int,
    num_experts: int,
    *,
    num_tokens: int,
    top_k: int,
    exponent: float,
    seed: int,
    windows: int = 1,
) -> IntArray:
    """``[W, L, E]`` loads of ``windows`` successive windows of ``num_tokens`` tokens each.

    The windows share each layer's popularity (the model's routing preferences) and differ by
    sampling, like consecutive load windows of one deployment.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((windows, num_layers, num_experts), dtype=np.int64)
    for layer in range(num_layers):
        pop = zipf_popularity(num_experts, exponent, rng)
        for w in range(windows):
            ids = zipf_topk(num_tokens, num_experts, top_k, exponent, rng, popularity=pop)
            out[w, layer] = np.bincount(ids.ravel(), minlength=num_experts)
    return out


def zipf_load(
    num_layers: int,
    num_experts: int,
    *,
    num_tokens: int,
    top_k: int,
    exponent: float,
    seed: int,
) -> IntArray:
    """``[L, E]`` tokens routed to each expert when ``num_tokens`` tokens pass every layer."""
    windows = zipf_windows(
        num_layers,
        num_experts,
        num_tokens=num_tokens,
        top_k=top_k,
        exponent=exponent,
        seed=seed,
    )
    out: IntArray = windows[0]
    return out
