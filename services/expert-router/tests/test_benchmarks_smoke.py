"""Smoke runs of the expert-router benchmarks (CI runs these; timings are never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.integration
def test_eplb_placement_smoke(tmp_path: Path) -> None:
    out = tmp_path / "eplb.json"
    r = _run("eplb_placement.py", "--smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "round_robin" in r.stdout and "gain" in r.stdout
    data = json.loads(out.read_text())
    row = data["results"][0]
    assert set(row["imbalance"]) >= {"round_robin", "linear", "balancer"}
    assert row["gain_vs_round_robin"] >= 2.0  # Zipf 1.0 on DeepSeek-V3 EP32 shapes


@pytest.mark.integration
def test_rank_routing_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rank.json"
    r = _run("rank_routing.py", "--smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["results"]
    policies = {row["policy"] for row in rows}
    assert {"least_load", "prefix", "balanced(w=1)"} <= policies
    by = {row["policy"]: row for row in rows}
    # Routing to cached prefixes recomputes less than least-load on shared-prefix traffic.
    assert by["balanced(w=1)"]["cache_hit_fraction"] > by["least_load"]["cache_hit_fraction"]


@pytest.mark.integration
def test_moe_dispatch_smoke_on_cpu_with_gloo(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the dispatch benchmark needs torch (`make torch`)")
    out = tmp_path / "dispatch.json"
    r = _run("moe_dispatch.py", "--device", "cpu", "--smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["env"] == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }
    rows = data["results"]
    assert {(r["tokens_per_rank"], r["layout"], r["chunks"]) for r in rows} == {
        (t, layout, c) for t in (16, 64) for layout in ("expert", "source") for c in (1, 2)
    }
    for row in rows:
        # Each rank sends T*k rows out and gets as many back: bytes = 2 * T * k * H * 2 (bf16).
        assert row["bytes_per_rank"] == 2 * row["tokens_per_rank"] * 4 * 256 * 2
        assert row["ours_s"] > 0 and row["raw_s"] > 0


def test_moe_dispatch_refuses_cuda_without_a_gpu() -> None:
    torch = pytest.importorskip("torch", reason="the dispatch benchmark needs torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path does not apply")
    r = _run("moe_dispatch.py", "--smoke")
    assert r.returncode == 2 and "no CUDA device" in r.stderr
