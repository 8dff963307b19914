"""Smoke runs of vllm-sim's benchmarks: they must run end to end and write well-formed JSON.

Timings are never asserted; the benchmarks report them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_sim_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sim_overhead.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DES simulated req / CPU-s" in proc.stdout
    doc = json.loads(out.read_text())
    ns = doc["non_streaming"]
    assert ns["llmd_sim"]["requests"] == 100 and ns["llmd_sim"]["errors"] == 0
    assert ns["bare_uvicorn"]["rps"] > 0 and ns["ratio_sim_over_bare_rps"] > 0
    assert doc["streams"]["completed"] == doc["streams"]["streams"] == 10
    assert doc["des"]["requests"] == 300 and doc["des"]["sim_requests_per_cpu_s"] > 0


def test_calibrate_gpu_smoke_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed (make torch)")
    out = tmp_path / "calib.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "calibrate_gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    kinds = {p["kind"] for p in doc["measurements"]}
    assert kinds == {"prefill", "decode"}
    assert all(p["median_s"] > 0 and "relative_error" in p for p in doc["measurements"])
    err = doc["fit_error"]
    assert err["max_abs_relative_error"] >= err["mean_abs_relative_error"] >= 0
    # The output is itself a latency profile vllm-sim can load.
    from llmd_sim.latency import LatencyModel, load_profile

    profile = load_profile(out)
    assert profile.provisional and LatencyModel(profile).step_time(100, 5050, 0, 0) > 0
