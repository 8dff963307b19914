"""CI runs `benchmarks/epp_overhead.py --smoke`: end to end, well-formed JSON. Timings are the
benchmark's to report, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
pytestmark = pytest.mark.integration


def test_epp_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "epp.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "epp_overhead.py"),
            "--smoke",
            "--replicas",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bare grpc.aio echo" in proc.stdout and "llmd-epp" in proc.stdout
    doc = json.loads(out.read_text())
    epp = doc["epp"]["8"]
    assert epp["failures"] == 0
    assert epp["decisions_per_s"] > 0 and epp["p99_ms"] >= epp["p50_ms"] > 0
    assert epp["cost_ratio_vs_echo"] > 0
    assert doc["horizontal"]["replicas"] == 2 and doc["horizontal"]["failures"] == 0
    assert doc["horizontal"]["aggregate_decisions_per_s"] > 0
