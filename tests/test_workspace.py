"""Workspace rules that keep the services independent."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
MEMBERS = [ROOT / "libs" / "llmd_sdk", *SERVICES]


def _package_of(member: Path) -> str:
    return next(p.name for p in (member / "src").iterdir() if (p / "__init__.py").exists())


SERVICE_PACKAGES = {_package_of(s): s for s in SERVICES}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_member_has_the_standard_layout() -> None:
    for member in MEMBERS:
        for name in ("pyproject.toml", "README.md", "CHANGELOG.md", "Dockerfile"):
            assert (member / name).is_file(), f"{member.relative_to(ROOT)} lacks {name}"
        assert (member / "tests").is_dir(), f"{member.relative_to(ROOT)} lacks tests/"
        meta = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["version"]), member


def test_no_service_imports_another_service() -> None:
    offenders: list[str] = []
    for pkg, member in SERVICE_PACKAGES.items():
        others = set(SERVICE_PACKAGES) - {pkg}
        for path in sorted(member.rglob("*.py")):
            if ".venv" in path.parts:
                continue
            for name in _imported_top_levels(path) & others:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    sdk = ROOT / "libs" / "llmd_sdk"
    for path in sorted(sdk.rglob("*.py")):
        for name in _imported_top_levels(path) & set(SERVICE_PACKAGES):
            offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "services talk over wire contracts only:\n" + "\n".join(offenders)


def test_no_service_depends_on_another_service() -> None:
    dists = {
        tomllib.loads((s / "pyproject.toml").read_text())["project"]["name"]: s for s in SERVICES
    }
    for dist, member in dists.items():
        deps = tomllib.loads((member / "pyproject.toml").read_text())["project"]["dependencies"]
        names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in deps}
        assert not names & (set(dists) - {dist}), f"{dist} depends on {names & set(dists)}"
        assert "llmd-sdk" in names, f"{dist} must build on llmd-sdk"


def test_the_import_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import llmd_epp.server\nfrom llmd_bbr import x\nfrom . import y\n")
    assert _imported_top_levels(probe) == {"llmd_epp", "llmd_bbr"}
