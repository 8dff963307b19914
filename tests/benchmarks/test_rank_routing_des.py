"""`benchmarks/rank_routing_des.py` on a tiny config: every router runs on the same trace, the
ratios are taken against least-load of the same run, and the EPP plugin agrees with the SDK.

Timings are never asserted; the benchmark reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def test_smoke_run_writes_rows_for_every_router(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    bench = load_benchmark("rank_routing_des")
    out = tmp_path / "des.json"
    assert bench.main(["--smoke", "--seed", "3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["command"].endswith("--smoke --seed 3 --out " + str(out))
    assert doc["seed"] == 3 and doc["ranks"] == 8
    rows = {r["router"]: r for r in doc["results"]}
    assert set(rows) == set(bench.ROUTERS)
    (case,) = doc["cases"]
    requests = case["workload"]["groups"] * case["workload"]["users_per_group"] * 2
    assert case["workload"]["seed"] == 3
    assert all(r["requests"] == requests for r in rows.values())
    assert rows["least-load"]["ttft_p90_s_vs_least_load"] == 1.0
    for r in rows.values():
        assert r["ttft_p90_s_vs_least_load"] == r["ttft_p90_s"] / rows["least-load"]["ttft_p90_s"]
        assert 0.0 <= r["prefix_hit_rate"] <= 1.0 and r["lockstep_overhead"] >= 1.0
    # The EPP plugin and the SDK balancer make the same choices from the same inputs.
    sdk, epp = rows["sdk-balancer"], rows["epp-dp-rank-balancer"]
    assert (epp["ttft_p50_s"], epp["prefix_hit_rate"]) == (
        sdk["ttft_p50_s"],
        sdk["prefix_hit_rate"],
    )
