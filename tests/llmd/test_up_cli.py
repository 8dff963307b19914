"""`llmd up` refusing to start: one clear line on stderr, no traceback, nothing started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmd.local import free_ports


def run_up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd", "up", *args, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "model": "o/m", "replicas": -1}]}))
    proc = run_up(str(path))
    assert proc.returncode == 2
    assert one_line(proc) == (
        f"llmd up: {path}: models[0].replicas: Input should be greater than or equal to 1 (got -1)"
    )


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    proc = run_up(str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2
    assert one_line(proc).endswith("absent.yaml: no such file")


@pytest.mark.integration
def test_port_in_use_is_one_line_naming_the_field(tmp_path: Path) -> None:
    held, *others = free_ports(5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", held))
        s.listen()
        path = tmp_path / "stack.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "kvmanager": {"enabled": False},
                    "bbr": {"grpcPort": others[0], "healthPort": others[1], "metricsPort": 0},
                    "modelservice": {"port": held},
                    "gateway": {"port": others[2]},
                    "models": [{"name": "m", "model": "o/m", "epp": {"grpcPort": others[3]}}],
                }
            )
        )
        proc = run_up(str(path))
    assert proc.returncode == 1
    line = one_line(proc)
    assert line.startswith(f"llmd up: port {held} on 127.0.0.1 (modelservice.port) is in use")
    assert str(path) in line
