"""CI runs the BBR benchmark's smoke mode: end to end, well-formed JSON. Timings are never
asserted here; the benchmark reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.integration
def test_bbr_throughput_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bbr.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bbr_throughput.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "per-request cost (server CPU), BBR / echo" in proc.stdout
    doc = json.loads(out.read_text())
    assert {(c["mode"], c["size"]) for c in doc["cases"]} == {
        ("buffered", "4KiB"),
        ("buffered", "64KiB"),
    }
    for case in doc["cases"]:
        for subject in ("echo", "sdk", "bbr"):
            m = case["median"][subject]
            assert m["requests"] > 0 and m["rps"] > 0
            assert m["p99_ms"] >= m["p50_ms"] > 0 and m["cpu_us_per_req"] > 0
        assert case["cost_ratio_cpu"] > 0
    (one,) = doc["workers_scaling"]
    assert one["workers"] == 1 and one["rps"] > 0


def test_a_server_that_never_listens_is_stopped_not_orphaned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bbr_throughput as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    started: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str]) -> subprocess.Popen[bytes]:
        # A stand-in server process that never listens.
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(proc)
        return proc

    def never_listens(*_: object) -> None:
        raise TimeoutError("nothing listens")

    monkeypatch.setattr(bench, "spawn", spawn)
    monkeypatch.setattr(bench, "wait_for_port", never_listens)
    try:
        with pytest.raises(TimeoutError):
            bench.Server("sdk")
        (proc,) = started
        assert proc.poll() is not None, "the benchmark left its server running"
    finally:
        for p in started:  # whatever the outcome, this test leaves nothing behind
            p.kill()
            p.wait()
