"""Shared by the benchmark tests: the scripts in `benchmarks/` are not a package."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_benchmark() -> Callable[[str], ModuleType]:
    """`load_benchmark("name")` imports `benchmarks/name.py` as the module `name`."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a script's dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    return load
