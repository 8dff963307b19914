"""Helpers of the deployment checks: the Kustomize tree rendered with the real kubectl, the
workspace members, and lookups over rendered objects. Imported by the tests (conftest.py puts this
directory on sys.path: pytest runs with --import-mode=importlib)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize"
OVERLAYS = sorted(
    p.parent.relative_to(KUSTOMIZE / "overlays").as_posix()
    for p in (KUSTOMIZE / "overlays").glob("*/*/kustomization.yaml")
)
ENGINE_WORKLOADS = {("apps/v1", "Deployment"), ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")}

Obj = dict[str, Any]


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail(
            "kubectl is missing: install kubectl >= 1.27 (it ships kustomize v5) to render "
            "deploy/kustomize; the deployment checks cannot run without it",
            pytrace=False,
        )
    return exe


def kustomize_build(path: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{done.stderr}", pytrace=False)
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


@dataclass(frozen=True)
class PodTemplate:
    """A pod template and the workload that owns it (a Deployment, or one side of an LWS)."""

    owner: Obj
    where: str  # "Deployment/name" or "LeaderWorkerSet/name:leader"
    template: Obj
    replicas: int

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template.get("metadata", {}).get("labels", {}))

    @property
    def spec(self) -> Obj:
        spec: Obj = self.template["spec"]
        return spec

    def containers(self) -> Iterator[Obj]:
        yield from self.spec.get("containers", [])
        yield from self.spec.get("initContainers", [])


@dataclass
class Render:
    """The objects of one rendered kustomization, with lookups."""

    name: str
    objects: list[Obj]
    by_key: dict[tuple[str, str, str], Obj] = field(init=False)

    def __post_init__(self) -> None:
        self.by_key = {key(o): o for o in self.objects}

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str, namespace: str = "llm-d") -> Obj | None:
        return self.by_key.get((kind, namespace, name)) or self.by_key.get((kind, "", name))

    def need(self, kind: str, name: str) -> Obj:
        """The object, which the render must contain."""
        found = self.get(kind, name)
        assert found is not None, f"{self.name}: no {kind}/{name}"
        return found

    def pod_templates(self) -> list[PodTemplate]:
        out = []
        for o in self.objects:
            where = f"{o['kind']}/{o['metadata']['name']}"
            if o["kind"] == "Deployment":
                out.append(
                    PodTemplate(o, where, o["spec"]["template"], o["spec"].get("replicas", 1))
                )
            elif o["kind"] == "LeaderWorkerSet":
                lwt = o["spec"]["leaderWorkerTemplate"]
                groups = o["spec"].get("replicas", 1)
                size = lwt.get("size", 1)
                leader = lwt.get("leaderTemplate", lwt["workerTemplate"])
                out.append(PodTemplate(o, where + ":leader", leader, groups))
                out.append(
                    PodTemplate(o, where + ":worker", lwt["workerTemplate"], groups * (size - 1))
                )
        return out

    def engine_workloads(self) -> list[Obj]:
        return [
            o
            for o in self.objects
            if (o["apiVersion"], o["kind"]) in ENGINE_WORKLOADS
            and o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")
            == "llmd-modelservice"
        ]


_cache: dict[str, Render] = {}


def render_path(path: Path, name: str | None = None) -> Render:
    label = name or path.relative_to(REPO).as_posix()
    if label not in _cache:
        _cache[label] = Render(label, kustomize_build(path))
    return _cache[label]


def load_yaml_docs(path: Path) -> list[Obj]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


@dataclass(frozen=True)
class Member:
    """A workspace member: its directory, project name, version and console scripts."""

    path: Path
    name: str
    version: str
    scripts: dict[str, str]

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def members() -> list[Member]:
    with (REPO / "pyproject.toml").open("rb") as f:
        globs = tomllib.load(f)["tool"]["uv"]["workspace"]["members"]
    out = []
    for d in sorted({p for g in globs for p in REPO.glob(g) if (p / "pyproject.toml").is_file()}):
        with (d / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f)["project"]
        out.append(Member(d, project["name"], project["version"], project.get("scripts", {})))
    return out


def render_with_components(overlay: str, components: list[str], workdir: Path) -> Render:
    """The overlay plus more components, through a kustomization in `workdir` (kustomize wants
    relative paths)."""
    cached = f"{overlay}+{'+'.join(components)}"
    if cached in _cache:
        return _cache[cached]
    base = Path(os.path.relpath(KUSTOMIZE / "overlays" / overlay, workdir))
    comps = [Path(os.path.relpath(KUSTOMIZE / "components" / c, workdir)) for c in components]
    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n"
        "components:\n" + "".join(f"  - {c}\n" for c in comps)
    )
    _cache[cached] = Render(cached, kustomize_build(workdir))
    return _cache[cached]
