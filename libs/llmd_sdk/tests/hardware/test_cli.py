"""`python -m llmd_sdk.hardware` as a user runs it, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llmd_sdk.hardware import HardwareProfile

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd_sdk.hardware", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_prints_an_indented_profile_and_a_compact_one() -> None:
    indented, compact = _run(), _run("--compact")
    assert indented.returncode == 0 and compact.returncode == 0, indented.stderr
    assert indented.stdout.startswith("{\n  ")
    assert compact.stdout.count("\n") == 1
    profile = HardwareProfile.model_validate_json(indented.stdout)
    assert HardwareProfile.model_validate_json(compact.stdout) == profile


def test_record_then_replay_gives_the_same_profile(tmp_path: Path) -> None:
    out = tmp_path / "machine"
    recorded = _run("--record", str(out))
    assert recorded.returncode == 0, recorded.stderr
    assert {p.name for p in out.iterdir()} == {"root", "system.json", "commands.json", "nvml.json"}
    assert (out / "root" / "proc" / "cpuinfo").is_file()
    replayed = _run("--replay", str(out))
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == json.loads(recorded.stdout)


def test_record_refuses_a_non_empty_directory_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = _run("--record", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "is not empty" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_replay_of_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = _run("--replay", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: --replay ") and "Traceback" not in result.stderr


def test_importing_the_cli_loads_nothing_beyond_pydantic() -> None:
    """On a GPU host the module must run with only pydantic and nvidia-ml-py installed."""
    probe = (
        "import sys; before = set(sys.modules); import llmd_sdk.hardware.__main__; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    # _sysconfigdata_* is the interpreter's own build configuration module.
    third_party = {m for m in result.stdout.split() if not m.startswith("_sysconfigdata")}
    assert third_party <= {
        "llmd_sdk",
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        "typing_inspection",
        "annotated_types",
    }, third_party
