"""The CRD's schema is structural and accepts what users write (the examples).

No API server runs here, so the schema is checked by walking it (the structural rules the
API server enforces) and by validating documents with a small OpenAPI v3 subset validator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmd_modelservice.crd import crd
from llmd_modelservice.server import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "modelservice"
FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"}


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str, problems: list[str]) -> None:
    bad = FORBIDDEN & set(node)
    if bad:
        problems.append(f"{path}: has {sorted(bad)}")
    typed = "type" in node or node.get("x-kubernetes-int-or-string")
    if not typed:
        problems.append(f"{path}: no type")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties false is not allowed")
    if node.get("type") == "object" and not (
        "properties" in node
        or "additionalProperties" in node
        or node.get("x-kubernetes-preserve-unknown-fields")
        or path.endswith(".metadata")
    ):
        problems.append(f"{path}: object without properties, map or preserve-unknown-fields")
    for key, child in node.get("properties", {}).items():
        _walk(child, f"{path}.{key}", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)
    if "items" in node:
        _walk(node["items"], f"{path}[]", problems)


def validate(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """The parts of OpenAPI v3 validation the CRD uses; unknown fields count as errors here."""
    errs: list[str] = []
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null not allowed"]
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{path}: want int or string"]
    t = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if t and not checks[t](value):
        return [f"{path}: want {t}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in enum")
    if t == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errs.append(f"{path}: too short")
        if len(value) > schema.get("maxLength", 1 << 30):
            errs.append(f"{path}: too long")
    if t in ("integer", "number"):
        lo = schema.get("minimum")
        if lo is not None and (value <= lo if schema.get("exclusiveMinimum") else value < lo):
            errs.append(f"{path}: below minimum {lo}")
        hi = schema.get("maximum")
        if hi is not None and (value >= hi if schema.get("exclusiveMaximum") else value > hi):
            errs.append(f"{path}: above maximum {hi}")
    if t == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{path}.{req}: required")
        for k, v in value.items():
            if k in props:
                errs += validate(props[k], v, f"{path}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += validate(schema["additionalProperties"], v, f"{path}.{k}")
            elif props:
                errs.append(f"{path}.{k}: unknown field")
    if t == "array":
        for i, v in enumerate(value):
            errs += validate(schema["items"], v, f"{path}[{i}]")
    return errs


def test_schema_is_structural() -> None:
    problems: list[str] = []
    _walk(_schema(), "", problems)
    assert problems == []


def test_crd_identity_and_subresources() -> None:
    c = crd()
    assert c["metadata"]["name"] == "modelservices.llm-d.ai"
    spec = c["spec"]
    assert spec["group"] == "llm-d.ai" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelService" and spec["names"]["plural"] == "modelservices"
    (v,) = spec["versions"]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert v["subresources"]["status"] == {}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(path: Path) -> None:
    schema = _schema()
    for doc in yaml.safe_load_all(path.read_text()):
        assert validate(schema, doc) == []


def test_schema_rejects_what_pydantic_rejects() -> None:
    doc = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"name": ""},
            "replicas": -1,
            "engine": {"kind": "tgi", "gpuMemoryUtilization": 0},
            "kvEvents": {"endpoint": "http://nope"},
            "extra": 1,
        },
    }
    errs = validate(_schema(), doc)
    assert sorted(e.split(":")[0] for e in errs) == [
        ".spec.engine.gpuMemoryUtilization",
        ".spec.engine.kind",
        ".spec.extra",
        ".spec.kvEvents.endpoint",
        ".spec.model.name",
        ".spec.replicas",
    ]


def test_specific_schema_shapes() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    params = spec["model"]["properties"]["parameters"]
    assert params["x-kubernetes-int-or-string"] is True and params["nullable"] is True
    assert spec["engine"]["properties"]["env"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    epp_config = spec["router"]["properties"]["epp"]["properties"]["config"]
    assert epp_config["type"] == "object" and epp_config["x-kubernetes-preserve-unknown-fields"]
    util = spec["engine"]["properties"]["gpuMemoryUtilization"]
    assert util["minimum"] == 0 and util["exclusiveMinimum"] is True and util["maximum"] == 1
    tol = spec["hardware"]["properties"]["tolerations"]
    assert tol["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_crd_command_prints_the_same_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd()
