"""The console script as a real process: flags, HTTP on a free port, SIGTERM, offline plans."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from llmd_expert_router.server import main
from llmd_expert_router.synthetic import zipf_load

SMALL = [
    "--num-layers", "2", "--num-experts", "16", "--num-groups", "4", "--num-ranks", "4",
    "--num-nodes", "2", "--num-redundant", "4",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd_expert_router.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _wait_ready(url: str, proc: subprocess.Popen[str], deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready in time")


@pytest.mark.integration
def test_serves_plans_over_http_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    load = zipf_load(2, 16, num_tokens=400, top_k=4, exponent=1.3, seed=0)
    load_file = tmp_path / "load.json"
    load_file.write_text(json.dumps({"counts": load.tolist()}))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmd_expert_router.server", *SMALL, "--host", "127.0.0.1",
         "--port", str(port), "--rebalance-interval-s", "0", "--load-file", str(load_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        # The load file was planned for at start: version 2 replaced the initial plan.
        plan = httpx.get(url + "/v1/plan").json()
        assert plan["version"] == 2 and plan["imbalance"] < plan["round_robin_imbalance"]
        r = httpx.post(url + "/v1/loads", json={"source": "e0", "counts": load.tolist()})
        assert r.status_code == 202 and r.json()["window_reports"] == 2
        assert "llmd_expert_router_plan_version 2.0" in httpx.get(url + "/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "shutdown_requested" in events and events[-1] == "stopped"


@pytest.mark.integration
def test_offline_plan_writes_the_plan_and_reports_the_gain(tmp_path: Path) -> None:
    load = zipf_load(2, 16, num_tokens=400, top_k=4, exponent=1.3, seed=1)
    src, out = tmp_path / "load.json", tmp_path / "plan.json"
    src.write_text(json.dumps(load.tolist()))
    r = _cli("plan", *SMALL, "--load-file", str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["published"] and summary["candidate_imbalance"] < summary["current_imbalance"]
    plan = json.loads(out.read_text())
    assert len(plan["phy2log"]) == 2 and plan["topology"]["num_ranks"] == 4


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--num-redundant", "3"], {}, "num_redundant: 256 experts + 3 replicas"),
        (["--port", "x"], {}, "port: must be an integer (got x)"),
        ([], {"LLMD_EXPERT_ROUTER_MIN_IMPROVEMENT": "2"}, "min_improvement: must be < 1 (got 2)"),
        (["--policy", "best"], {}, "policy: must be one of"),
        (["--num-nodes", "3"], {}, "num_nodes: must divide num_ranks=32"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmd-expert-router: "), lines
    assert message in lines[0], lines


@pytest.mark.integration
def test_offline_plan_needs_a_load_file() -> None:
    r = _cli("plan", *SMALL)  # a real process: the exit status and stderr as a shell sees them
    assert (
        r.returncode == 2
        and r.stderr.strip() == "llmd-expert-router plan: load_file: required by `plan`"
    )
