"""The lifecycle benchmark's smoke mode runs and writes its JSON (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "lifecycle.py"


@pytest.mark.integration
def test_lifecycle_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "lifecycle.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["replicas"] == 2
    results = data["results"]
    assert set(results) == {
        "engine_start_bare_s",
        "supervised_cold_start_all_s",
        "recovery_after_sigkill_s",
        "recovery_vs_bare_start_ratio",
        "watch_delivery_ms",
        "api_request_rtt_ms",
        "watch_vs_request_ratio",
        "drain_and_stop_all_s",
    }
    assert all(v > 0 for v in results.values())
    assert "recovery_vs_bare_start_ratio" in proc.stdout, "the table is printed"
