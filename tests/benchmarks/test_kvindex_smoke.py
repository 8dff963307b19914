"""CI runs benchmarks/kvindex.py in smoke mode: end to end, well-formed JSON, real work done.

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
def test_kvindex_smoke(tmp_path: Path) -> None:
    out = tmp_path / "kv.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kvindex.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ingest (block events applied per second, one core)" in proc.stdout
    doc = json.loads(out.read_text())
    subjects = [r["subject"] for r in doc["ingest"]]
    assert subjects[0] == "baseline: null index" and "memory" in subjects
    for r in doc["ingest"]:
        # every block event the publisher sent was applied, none lost to a gap
        assert r["block_events"] == r["expected_block_events"] > 0
        assert r["gaps"] == 0
        assert r["block_events_per_s"] > 0
    rows = {r["subject"]: r for r in doc["score"]}
    for kind in (
        "tokens, seen",
        "tokens, new suffix",
        "tokens, uncached",
        "text, repeat",
        "text, new",
    ):
        r = rows[f"memory: {kind}"]
        assert r["calls"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
