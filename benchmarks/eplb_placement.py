"""Expert placement quality: llmd-expert-router's balancer against load-oblivious layouts.

For each deployment shape and Zipf skew, two consecutive load windows are drawn from the same
per-layer expert popularity (Zipf, random ranking per layer; each token picks top-k distinct
experts). The balancer plans on window 1; every placement is scored on window 1 ("planned") and
on window 2 ("held-out", what the plan meets in service). Score: the imbalance factor
``sum_l max_r load / sum_l mean_r load`` over ranks (1.0 = perfect; a forward pass is as slow as
the busiest rank of each layer). Baselines, measured in the same run on the same loads:
``round_robin`` (expert e on rank e mod R, replica slots dealt in order) and ``linear``
(contiguous blocks). ``gain`` = round-robin imbalance / balancer imbalance on the held-out window.

    uv run --no-sync python benchmarks/eplb_placement.py --out benchmarks/data/eplb_placement.json
    uv run --no-sync python benchmarks/eplb_placement.py --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llmd_expert_router.balancer import rebalance, uses_hierarchy
from llmd_expert_router.placement import Placement, Topology
from llmd_expert_router.synthetic import zipf_windows


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    experts: int
    top_k: int
    ranks: int
    nodes: int
    groups: int | None
    redundant: int


SHAPES = (
    # DeepSeek-V3/R1: 58 MoE layers, 256 routed experts in 8 groups, top-8.
    Shape("dsv3-ep32-4node", 58, 256, 8, 32, 4, 8, 32),
    Shape("dsv3-ep64-8node", 58, 256, 8, 64, 8, 8, 64),
    Shape("dsv3-ep144-18node", 58, 256, 8, 144, 18, 8, 32),
    # Qwen3-235B-A22B: 94 MoE layers, 128 experts, top-8, no groups.
    Shape("qwen3-235b-ep16-2node", 94, 128, 8, 16, 2, None, 16),
)
SMOKE_SHAPES = (Shape("dsv3-ep32-4node-smoke", 2, 256, 8, 32, 4, 8, 32),)


def evaluate(shape: Shape, exponent: float, tokens: int, seed: int) -> dict[str, Any]:
    topo = Topology.with_redundant(
        num_layers=shape.layers,
        num_logical_experts=shape.experts,
        num_ranks=shape.ranks,
        num_redundant=shape.redundant,
        num_nodes=shape.nodes,
        num_groups=shape.groups,
    )
    plan_load, serve_load = zipf_windows(
        shape.layers,
        shape.experts,
        num_tokens=tokens,
        top_k=shape.top_k,
        exponent=exponent,
        seed=seed,
        windows=2,
    )
    placements: dict[str, Placement] = {
        "round_robin": Placement.round_robin(topo),
        "linear": Placement.linear(topo),
    }
    timings: dict[str, float] = {}
    policies: list[tuple[str, bool | None]] = [("balancer", None)]
    if uses_hierarchy(topo):
        policies.append(("balancer_global", False))
    for name, hierarchical in policies:
        start = time.perf_counter()
        placements[name] = rebalance(plan_load, topo, hierarchical=hierarchical)
        timings[name] = time.perf_counter() - start
    scores = {
        name: {
            "planned": p.imbalance(plan_load),
            "held_out": p.imbalance(serve_load),
            "max_layer_held_out": float(p.per_layer_imbalance(serve_load).max()),
        }
        for name, p in placements.items()
    }
    ours = scores["balancer"]["held_out"]
    return {
        "shape": asdict(shape),
        "policy": "hierarchical" if uses_hierarchy(topo) else "global",
        "zipf_exponent": exponent,
        "tokens_per_window": tokens,
        "imbalance": scores,
        "gain_vs_round_robin": scores["round_robin"]["held_out"] / ours,
        "gain_vs_linear": scores["linear"]["held_out"] / ours,
        "plan_seconds": timings,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'shape':24s} {'zipf':>5s} {'policy':>12s} {'round_robin':>11s} {'linear':>7s} "
        f"{'balancer':>9s} {'(planned)':>9s} {'global':>7s} {'gain':>6s} {'plan_s':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["imbalance"]
        glob = s.get("balancer_global", {}).get("held_out")
        lines.append(
            f"{r['shape']['name']:24s} {r['zipf_exponent']:5.2f} {r['policy']:>12s} "
            f"{s['round_robin']['held_out']:11.3f} {s['linear']['held_out']:7.3f} "
            f"{s['balancer']['held_out']:9.3f} {s['balancer']['planned']:9.3f} "
            f"{'-' if glob is None else f'{glob:.3f}':>7s} {r['gain_vs_round_robin']:5.2f}x "
            f"{r['plan_seconds']['balancer']:7.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="one tiny case, a few seconds")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per load window")
    parser.add_argument("--zipf", type=float, nargs="+", default=[0.6, 1.0, 1.2])
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    shapes = SMOKE_SHAPES if ns.smoke else SHAPES
    exponents = [1.0] if ns.smoke else ns.zipf
    tokens = 512 if ns.smoke else ns.tokens
    rows = [evaluate(s, e, tokens, ns.seed) for s in shapes for e in exponents]
    print(table(rows))
    print(
        "\nimbalance = sum over layers of max rank load / mean rank load, on the held-out window "
        "(planned: on the window the plan was made from); gain = round_robin / balancer."
    )
    result = {
        "benchmark": "eplb_placement",
        "command": " ".join(["python", "benchmarks/eplb_placement.py", *(argv or sys.argv[1:])]),
        "machine": {"python": platform.python_version(), "numpy": np.__version__},
        "seed": ns.seed,
        "results": rows,
        "min_gain_vs_round_robin": min(r["gain_vs_round_robin"] for r in rows),
    }
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
