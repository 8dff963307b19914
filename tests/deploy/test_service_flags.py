"""The flags the manifests pass to our services exist: each container's `--flag`s appear in its
command's own `--help`. Catches a renamed or dropped flag before a pod crash-loops on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_tree import KUSTOMIZE, Render, render_path

OURS = {"llmd-epp", "llmd-bbr", "llmd-kvmanager", "llmd-modelservice", "llmd-expert-router"}


def all_service_containers() -> list[tuple[str, list[str]]]:
    """(command, args) of each of our services, over every overlay (they share the bases)."""
    seen: dict[str, list[str]] = {}
    for kustomization in sorted((KUSTOMIZE / "overlays").glob("*/*/kustomization.yaml")):
        r: Render = render_path(kustomization.parent)
        for t in r.pod_templates():
            for c in t.containers():
                name = t.owner["metadata"]["name"]
                if name in OURS:
                    seen[name] = c.get("args", [])
                elif "llmd-sim" in c["image"]:
                    seen["llmd-sim"] = c.get("args", [])
    return sorted(seen.items())


def command(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed yet (its service has not landed): flags unchecked")
    return found


@pytest.mark.parametrize(
    ("name", "args"), all_service_containers(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_flag_is_known_to_the_service(name: str, args: list[str]) -> None:
    exe = command(name)
    sub = [args[0]] if args and not args[0].startswith("-") else []
    done = subprocess.run(
        [exe, *sub, "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"{name} {' '.join(sub)} --help failed:\n{done.stderr}"
    known = set(re.findall(r"--[a-z0-9][a-z0-9.-]*", done.stdout))
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags <= known, f"{name}: {sorted(flags - known)} not in `{name} {' '.join(sub)} --help`"
