"""The `llmd-modelservice` command: exit codes, one-line errors, and `serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from llmd_modelservice.server import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "modelservice"
FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")
CLI = [sys.executable, "-m", "llmd_modelservice.server"]


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.integration
def test_invalid_spec_exits_2_with_every_error_and_no_traceback(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "bad.yaml",
        {
            "metadata": {"name": "x"},
            "spec": {"model": {}, "replicas": "many", "engine": {"kind": "?"}},
        },
    )
    out = subprocess.run([*CLI, "validate", str(spec)], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "invalid ModelService spec: 3 error(s)"
    assert [ln.split(": ")[1] for ln in lines[1:]] == [
        "spec.model.name",
        "spec.replicas",
        "spec.engine.kind",
    ]
    assert "Traceback" not in out.stderr


def test_plan_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: Any
) -> None:
    hw = tmp_path / "hw.json"
    hw.write_text(profile("nvidia").model_dump_json())
    assert main(["plan", str(EXAMPLES / "llama-8b.yaml"), "--hardware", str(hw)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "# node nvidia-node: nvidia, 8 device(s)"
    commands = [ln for ln in text if not ln.startswith("#")]
    assert len(commands) == 2
    assert commands[0].startswith("CUDA_VISIBLE_DEVICES=0 PYTHONHASHSEED=42 vllm serve ")
    assert commands[1].startswith("CUDA_VISIBLE_DEVICES=1 PYTHONHASHSEED=42 vllm serve ")
    assert (
        main(["plan", str(EXAMPLES / "llama-8b.yaml"), "--hardware", str(hw), "--format", "json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in data["replicas"]] == ["llama-8b-0", "llama-8b-1"]
    assert data["replicas"][1]["devices"] == [1]
    assert any("<= 0.9 x 79.60 GiB" in n for n in data["notes"])


@pytest.mark.integration
def test_plan_that_does_not_fit_exits_3_in_one_line(tmp_path: Path, profile: Any) -> None:
    hw = tmp_path / "hw.json"
    prof = profile("nvidia")
    prof.devices = prof.devices[:2]
    hw.write_text(prof.model_dump_json())
    out = subprocess.run(
        [*CLI, "plan", str(EXAMPLES / "qwen-pd.yaml"), "--hardware", str(hw)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1
    assert "needs 1 x 2 (TP 2 x DP 1) + 2 x 2 (TP 2 x DP 1) = 6 nvidia device(s), 2 free" in (
        out.stderr
    )


@pytest.mark.integration
def test_bad_hardware_file_is_one_line(tmp_path: Path) -> None:
    hw = tmp_path / "hw.json"
    hw.write_text('{"hostname": "h", "accelerator": "quantum"}')
    out = subprocess.run(
        [*CLI, "plan", str(EXAMPLES / "sim-small.yaml"), "--hardware", str(hw)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.startswith(f"llmd-modelservice: {hw}: not a HardwareProfile: accelerator")
    assert out.stderr.count("\n") == 1


@pytest.mark.integration
def test_serve_vllm_without_vllm_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "serve", str(EXAMPLES / "qwen-cpu.yaml"), "--port", "0", "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    if out.returncode == 0:
        pytest.skip("vLLM is installed here")
    assert out.returncode == 3
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("llmd-modelservice: qwen-cpu: engine kind 'vllm' cannot start: ")
    assert "spec.engine.kind: sim" in last


@pytest.mark.integration
def test_serve_runs_replicas_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "spec.yaml",
        {
            "metadata": {"name": "cli"},
            "spec": {
                "model": {"name": "m"},
                "replicas": 2,
                "engine": {"kind": "sim", "command": [sys.executable, str(FAKE_ENGINE)]},
                "local": {"basePort": 0},
                "health": {"intervalSeconds": 0.2},
            },
        },
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            str(spec),
            "--port",
            str(port),
            "--log-dir",
            str(tmp_path / "logs"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.05)
        assert ready, "serve became ready"
        model = httpx.get(f"{base}/v1/models/cli").json()
        pids = [r["pid"] for r in model["groups"][0]["replicas"]]
        assert len(pids) == 2 and all(pids)
        assert httpx.get(f"{base}/healthz").json() == {"status": "SERVING"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    events = [json.loads(ln) for ln in proc.stderr.read().splitlines() if ln.startswith("{")]
    assert any(e.get("event") == "all replicas stopped" for e in events)
    assert (tmp_path / "logs" / "cli-0.log").exists()


@pytest.mark.integration
def test_serve_port_in_use_is_one_line(tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "spec.yaml",
        {
            "metadata": {"name": "p"},
            "spec": {
                "model": {"name": "m"},
                "engine": {"kind": "sim", "command": [sys.executable, str(FAKE_ENGINE)]},
            },
        },
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run(
            [*CLI, "serve", str(spec), "--port", str(port), "--log-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"llmd-modelservice: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
