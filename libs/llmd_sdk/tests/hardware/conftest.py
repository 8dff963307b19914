"""Builders for small machines on disk: a root tree, an environment, recorded commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from llmd_sdk.hardware.recording import RecordedNVMLError
from llmd_sdk.hardware.system import NVMLApi, RecordedCommands, SystemView

FIXTURES = Path(__file__).parent / "fixtures"

ViewFactory = Callable[..., SystemView]


def _no_nvml() -> NVMLApi:
    raise RecordedNVMLError("NVML Shared Library Not Found")


@pytest.fixture
def make_view(tmp_path: Path) -> ViewFactory:
    """make_view(files={"/proc/cpuinfo": "..."}, dirs=[...], env={...}, commands=[...],
    nvml=<pynvml-shaped object or None>) -> SystemView over a fresh tree in tmp_path."""
    counter = {"n": 0}

    def build(
        files: Mapping[str, str] | None = None,
        dirs: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        commands: Sequence[Mapping[str, Any]] = (),
        nvml: NVMLApi | None = None,
        machine: str = "x86_64",
    ) -> SystemView:
        counter["n"] += 1
        root = tmp_path / f"machine{counter['n']}"
        root.mkdir()
        for d in dirs:
            (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path, text in (files or {}).items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return SystemView(
            root=root,
            env=dict(env or {}),
            run=RecordedCommands(list(commands)),
            nvml=(lambda: nvml) if nvml is not None else _no_nvml,
            hostname="test-host",
            machine=machine,
        )

    return build
