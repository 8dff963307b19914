"""CI runs every benchmark's smoke mode: it must run end to end and write well-formed JSON.

Timings are never asserted here; the benchmark itself reports them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_extproc_roundtrip_smoke(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "extproc_roundtrip.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "per-request cost, SDK / echo" in proc.stdout
    doc = json.loads(out.read_text())
    for subject in ("echo", "sdk"):
        (rnd,) = doc["rounds"][subject]
        assert rnd["requests"] == 200
        assert rnd["rps"] > 0 and rnd["p99_ms"] >= rnd["p50_ms"] > 0
    assert doc["cost_ratio_sdk_over_echo"] > 0
