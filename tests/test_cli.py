from __future__ import annotations

import subprocess
import sys

import llmd
from llmd.cli import main


def test_version_flag_prints_the_distribution_version(capsys: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"llmd {llmd.__version__}"


def test_help_lists_the_program_and_no_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmd", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "usage: llmd" in proc.stdout
    assert main([]) == 2
