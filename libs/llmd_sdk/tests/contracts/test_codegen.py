"""The committed generated code must be exactly what the protos produce."""

from __future__ import annotations

import filecmp
from pathlib import Path

from llmd_sdk.contracts import codegen


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    assert codegen.proto_files(), "no .proto files found"
    codegen.generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(codegen.GEN_DIR)
    assert sorted(fresh) == sorted(committed), "regenerate: python -m llmd_sdk.contracts.codegen"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"stale generated files {stale}: run python -m llmd_sdk.contracts.codegen"


def test_generated_imports_never_reach_the_root_llmd_package(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    for path in tmp_path.rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.startswith("from llmd."), f"{path.name}: {line}"
            assert not line.startswith("import llmd."), f"{path.name}: {line}"
