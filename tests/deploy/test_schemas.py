"""Every rendered object passes schema validation, strictly (see schema_check.py), and the
validators do reject broken objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from deploy_tree import KUSTOMIZE, Obj, Render, load_yaml_docs
from schema_check import errors_of


def test_every_object_is_valid(rendered: Render) -> None:
    problems = [p for o in rendered.objects for p in errors_of(o)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "spec",
    sorted(p.relative_to(KUSTOMIZE).as_posix() for p in KUSTOMIZE.rglob("modelservice.yaml")),
)
def test_modelservice_specs_satisfy_our_crd(spec: str) -> None:
    (obj,) = load_yaml_docs(KUSTOMIZE / spec)
    assert errors_of(obj) == []


# -- the validators can fail: each broken object below must be rejected -----------------------


def _deployment() -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }


def _pool() -> Obj:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        },
    }


def _broken(base: Obj, path: list[Any], value: Any, drop: bool = False) -> Obj:
    obj = copy.deepcopy(base)
    node = obj
    for p in path[:-1]:
        node = node[p]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (_deployment(), None),
        (_broken(_deployment(), ["spec", "replica"], 2), "unknown field replica"),
        (
            _broken(_deployment(), ["spec", "template", "spec", "containers", 0, "image"], 7),
            "image not a string",
        ),
        (_pool(), None),
        (_broken(_pool(), ["spec", "targetPortNumber"], 8000), "pre-v1 field targetPortNumber"),
        (_broken(_pool(), ["spec", "targetPorts", 0, "number"], 0), "port 0"),
        (_broken(_pool(), ["spec", "endpointPickerRef"], None, drop=True), "no endpointPickerRef"),
        (
            _broken(_pool(), ["spec", "endpointPickerRef", "failureMode"], "Open"),
            "failureMode not in enum",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_validators_reject_broken_objects(obj: Obj, why: str | None) -> None:
    errs = errors_of(obj)
    if why is None:
        assert errs == []
    else:
        assert errs, f"accepted an object with {why}"


def test_modelservice_crd_rejects_unknown_and_mistyped_fields() -> None:
    (spec,) = load_yaml_docs(
        KUSTOMIZE / "overlays" / "cpu" / "inference-scheduling" / "modelservice.yaml"
    )
    assert errors_of(spec) == []
    assert errors_of(_broken(spec, ["spec", "replica"], 3))
    assert errors_of(_broken(spec, ["spec", "replicas"], "three"))
    assert errors_of(_broken(spec, ["spec", "engine", "kind"], "tgi"))
