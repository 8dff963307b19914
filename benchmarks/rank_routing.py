"""Rank-aware routing in a DP=8 wide-EP group: the balancer against least-load and prefix-only.

Runs ``llmd_expert_router.rank_sim``, a step-synchronous model of one EP group (ranks step
together; a step lasts as long as its busiest rank needs; per-rank prefix caches; Poisson
arrivals of requests sharing Zipf-popular prefixes). Baselines run in the same process on the
same request stream. This is a model of the one effect, not the cluster simulator; vllm-sim's
discrete-event engine is where the EPP plugin is evaluated end to end.

    uv run --no-sync python benchmarks/rank_routing.py --out benchmarks/data/rank_routing.json
    uv run --no-sync python benchmarks/rank_routing.py --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llmd_expert_router.rank_sim import Group, RoutingPolicy, Workload, simulate

WORKLOADS = {
    "shared-prefix": Workload(prefix_tokens=3000, suffix_mean_tokens=300, decode_mean_tokens=150,
                              prefix_zipf=1.5),
    "long-unique": Workload(prefix_tokens=2000, suffix_mean_tokens=2000, decode_mean_tokens=50,
                            prefix_zipf=1.5),
    "no-prefix": Workload(prefix_tokens=0, suffix_mean_tokens=1500, decode_mean_tokens=150),
}  # fmt: skip
POLICIES: list[tuple[RoutingPolicy, float]] = [
    ("least_load", 0.0),
    ("prefix", 0.0),
    ("balanced", 0.0),
    ("balanced", 1.0),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+", default=[40.0, 80.0, 160.0])
    parser.add_argument("--requests", type=int, default=3000)
    ns = parser.parse_args(argv)
    rates = [80.0] if ns.smoke else ns.rates
    n = 200 if ns.smoke else ns.requests
    names = ["shared-prefix"] if ns.smoke else list(WORKLOADS)
    group = Group(ranks=8)
    rows: list[dict[str, Any]] = []
    head = (
        f"{'workload':14s} {'req/s':>6s} {'policy':16s} {'makespan_s':>10s} {'ttft_mean':>9s} "
        f"{'ttft_p90':>8s} {'cache_hit':>9s} {'step_imb':>8s} {'vs least_load':>13s}"
    )
    print(head + "\n" + "-" * len(head))
    for name in names:
        for rate in rates:
            base = {**asdict(WORKLOADS[name]), "arrival_rate": rate, "num_requests": n}
            workload = Workload(**base)
            results = [simulate(p, workload, group, affinity_weight=w) for p, w in POLICIES]
            ll = results[0]
            for r in results:
                rows.append({"workload": name, **base, **asdict(r),
                             "cache_hit_fraction": r.cache_hit_fraction,
                             "makespan_vs_least_load": r.makespan_s / ll.makespan_s,
                             "ttft_vs_least_load": r.ttft_mean_s / ll.ttft_mean_s})  # fmt: skip
                print(
                    f"{name:14s} {rate:6.0f} {r.policy:16s} {r.makespan_s:10.2f} "
                    f"{r.ttft_mean_s:9.3f} {r.ttft_p90_s:8.3f} {r.cache_hit_fraction:9.2f} "
                    f"{r.step_imbalance:8.2f} {r.makespan_s / ll.makespan_s:12.3f}x"
                )
    print(
        "\nstep_imb = sum over steps of the busiest rank's tokens / mean rank tokens; "
        "vs least_load = makespan ratio (lower is better)."
    )
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps({
            "benchmark": "rank_routing",
            "command": " ".join(["python", "benchmarks/rank_routing.py", *(argv or sys.argv[1:])]),
            "group": asdict(group),
            "results": rows,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
