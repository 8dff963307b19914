"""`benchmarks/ttft_tail_des.py`: the tail counts on hand-made records, and a tiny real run.

Timings are never asserted; the benchmark reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from llmd_sim.cluster import RequestRecord


def _rec(rid: str, engine: int, arrival: float, ttft: float, cached: int) -> RequestRecord:
    return RequestRecord(rid, engine, arrival, 1000, 8, cached, arrival + ttft, arrival + 1, 0)


def test_tail_counts_cold_requests_and_the_warm_ones_that_arrived_during_their_prefill(
    load_benchmark: Callable[[str], ModuleType],
) -> None:
    bench = load_benchmark("ttft_tail_des")
    records = [
        _rec("cold", 0, 0.0, 0.24, 0),  # prefills on engine 0 from 0.0 to 0.24
        _rec("behind", 0, 0.1, 0.18, 900),  # warm, arrived on engine 0 mid-prefill
        _rec("elsewhere", 1, 0.1, 0.03, 900),  # warm, same time, another engine
        _rec("after", 0, 0.3, 0.03, 900),  # warm, engine 0 after the first token
        _rec("half", 0, 0.2, 0.05, 500),  # exactly half cached counts as warm
        *(_rec(f"w{i}", 2, 1.0 + i, 0.02, 900) for i in range(6)),
    ]
    got = bench.tail_composition(records)
    assert got == {
        "requests": 11,
        "cold": 1,
        "warm_behind_cold": 2,  # "behind" and "half"
        "tail": 2,  # ceil(11 / 10)
        "tail_cold": 1,  # the slowest two: "cold" (0.24 s) and "behind" (0.18 s)
        "slack": 1,
    }


def test_guide_config_is_the_bench_profile_without_the_no_hit_lru_scorer(
    load_benchmark: Callable[[str], ModuleType],
) -> None:
    from llmd.bench.live import PRECISE_EPP

    bench = load_benchmark("ttft_tail_des")
    guide = bench.guide_config()
    types = [p["type"] for p in guide["plugins"]]
    assert "no-hit-lru-scorer" not in types
    assert len(types) == len(PRECISE_EPP["plugins"]) - 1
    refs = [p["pluginRef"] for p in guide["schedulingProfiles"][0]["plugins"]]
    assert refs == ["precise-prefix-cache-scorer", "kv-cache-utilization-scorer", "queue-scorer",
                    "max-score-picker"]  # fmt: skip
    # The bench's own config is untouched.
    assert any(p["type"] == "no-hit-lru-scorer" for p in PRECISE_EPP["plugins"])


def test_smoke_run_reports_every_subject_on_one_trace_against_the_model(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    bench = load_benchmark("ttft_tail_des")
    out = tmp_path / "tail.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["router"]: r for r in doc["results"]}
    assert set(rows) == set(bench.SUBJECTS)
    n = doc["workload"]["groups"] * doc["workload"]["users_per_group"] * doc["workload"]["turns"]
    for r in rows.values():
        assert r["requests"] == n
        assert 0 <= r["cold"] <= r["requests"] and r["slack"] == r["tail"] - r["cold"]
        assert r["p90_vs_model"] == rows[bench.BASELINE]["ttft_p90_s"] / r["ttft_p90_s"]
    # Round-robin scatters the groups, so more requests find their prompt nowhere.
    assert rows["round-robin"]["cold"] > rows["epp-precise"]["cold"]


def test_bad_rates_are_one_line_naming_the_flag(
    load_benchmark: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark("ttft_tail_des")
    assert bench.main(["--rates", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--rates:") and "\n" not in err
