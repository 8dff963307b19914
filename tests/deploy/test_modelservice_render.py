"""The overlays' engines are exactly what `llmd-modelservice render` makes of their specs.

Each overlay's engine workloads come from a ModelService spec next to them (modelservice.yaml ->
engines.yaml, written by deploy/generate.py). Three checks keep Kustomize and modelservice from ever
disagreeing:
- engines.yaml is what `llmd-modelservice render` prints today (and the CRD what `crd` prints);
- the rendered overlay deploys exactly those workloads, with every field render set unchanged
  (components may only add: security contexts, the HF token);
- the kind overlay's engines are the sim spec's (components/sim-engines), the CPU ones deleted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tree import ENGINE_WORKLOADS, KUSTOMIZE, OVERLAYS, REPO, Obj, Render, load_yaml_docs

SPECS = sorted(p.relative_to(KUSTOMIZE).as_posix() for p in KUSTOMIZE.rglob("modelservice.yaml"))
# Where an overlay's engines come from, when not from its own modelservice.yaml.
SPEC_OF = {"kind/inference-scheduling": "components/sim-engines/modelservice.yaml"}


def spec_of(overlay: str) -> str:
    return SPEC_OF.get(overlay, f"overlays/{overlay}/modelservice.yaml")


def modelservice_cli() -> list[str]:
    exe = Path(sys.executable).parent / "llmd-modelservice"
    found = str(exe) if exe.is_file() else shutil.which("llmd-modelservice")
    if found is None:
        pytest.skip(
            "llmd-modelservice is not installed (its `render` and `crd` commands land with the "
            "modelservice service): engines.yaml and crd.yaml cannot be re-rendered here"
        )
    return [found]


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [*modelservice_cli(), *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert done.returncode == 0, f"llmd-modelservice {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def engines_of(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if (o.get("apiVersion"), o.get("kind")) in ENGINE_WORKLOADS]


def ident(o: Obj) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def not_contained(want: Any, have: Any, path: str = "") -> list[str]:
    """Where `have` (the deployed object) lacks or changes something `want` (render's) sets.
    Lists of named items (containers, env, ports, volumes) match by name, other lists by position."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{path}: {have!r} is not a mapping"]
        out = []
        for k, v in want.items():
            if k not in have:
                out.append(f"{path}.{k}: missing (render sets {v!r})")
            else:
                out += not_contained(v, have[k], f"{path}.{k}")
        return out
    if isinstance(want, list):
        if not isinstance(have, list):
            return [f"{path}: {have!r} is not a list"]
        if want and all(isinstance(w, dict) and "name" in w for w in want):
            by_name = {h.get("name"): h for h in have if isinstance(h, dict)}
            out = []
            for w in want:
                if w["name"] not in by_name:
                    out.append(f"{path}[{w['name']}]: missing")
                else:
                    out += not_contained(w, by_name[w["name"]], f"{path}[{w['name']}]")
            return out
        if len(want) != len(have):
            return [f"{path}: {have!r} != render's {want!r}"]
        return [
            e
            for i, (w, h) in enumerate(zip(want, have, strict=True))
            for e in not_contained(w, h, f"{path}[{i}]")
        ]
    if want != have and str(want) != str(have):
        return [f"{path}: {have!r} != render's {want!r}"]
    return []


def image_map() -> dict[str, str]:
    """The `images` component's mapping, name -> newName:newTag."""
    (comp,) = load_yaml_docs(KUSTOMIZE / "components" / "images" / "kustomization.yaml")
    return {i["name"]: f"{i['newName']}:{i['newTag']}" for i in comp["images"]}


def with_images_mapped(obj: Obj) -> Obj:
    mapping = image_map()

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    mapping.get(v.split(":")[0], v)
                    if k == "image" and isinstance(v, str)
                    else walk(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(n) for n in node]
        return node

    out: Obj = walk(obj)
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_engines_yaml_is_what_render_prints(spec: str) -> None:
    path = KUSTOMIZE / spec
    fresh = engines_of([o for o in yaml.safe_load_all(run_cli("render", str(path))) if o])
    committed = load_yaml_docs(path.with_name("engines.yaml"))
    assert fresh, f"render printed no engine workload for {spec}"
    assert committed == fresh, (
        f"{path.with_name('engines.yaml').relative_to(REPO)} is stale: "
        "run `uv run --no-sync python3 deploy/generate.py`"
    )


def test_crd_is_what_modelservice_publishes() -> None:
    fresh = yaml.safe_load(run_cli("crd"))
    (committed,) = load_yaml_docs(KUSTOMIZE / "base" / "modelservice" / "crd.yaml")
    assert committed == fresh, "base/modelservice/crd.yaml is stale: run deploy/generate.py"


def test_overlay_deploys_exactly_the_rendered_engines(rendered: Render, overlay: str) -> None:
    spec = KUSTOMIZE / spec_of(overlay)
    assert spec.is_file(), f"{overlay}: no ModelService spec {spec_of(overlay)}"
    expected = [with_images_mapped(o) for o in load_yaml_docs(spec.with_name("engines.yaml"))]
    assert expected
    deployed = {ident(o): o for o in rendered.engine_workloads()}
    assert set(deployed) == {ident(o) for o in expected}, (
        f"{overlay} deploys {sorted(deployed)}, render makes {sorted(ident(o) for o in expected)}"
    )
    problems = [
        f"{ident(want)}{p}" for want in expected for p in not_contained(want, deployed[ident(want)])
    ]
    assert not problems, "\n".join(problems)


def test_every_spec_is_deployed_by_some_overlay() -> None:
    used = {spec_of(o) for o in OVERLAYS}
    assert set(SPECS) <= used, sorted(set(SPECS) - used)


def test_containment_catches_a_changed_field() -> None:
    want = {
        "spec": {
            "containers": [
                {"name": "vllm", "args": ["--port", "8000"], "env": [{"name": "A", "value": "1"}]}
            ]
        }
    }
    added = {
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "args": ["--port", "8000"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "securityContext": {},
                }
            ]
        }
    }
    assert not_contained(want, added) == []
    changed = {
        "spec": {
            "containers": [
                {"name": "vllm", "args": ["--port", "8200"], "env": [{"name": "A", "value": "1"}]}
            ]
        }
    }
    assert not_contained(want, changed)
    dropped = {"spec": {"containers": [{"name": "vllm", "args": ["--port", "8000"], "env": []}]}}
    assert not_contained(want, dropped)
