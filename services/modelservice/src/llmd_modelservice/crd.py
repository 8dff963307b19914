"""The CRD `modelservices.llm-d.ai`, its OpenAPI v3 schema generated from the pydantic model.

Kubernetes wants a *structural* schema: every node typed, no `$ref`, no unions of types. The
converter inlines references, turns `X | None` into `X` with `nullable: true`, `int | str` into
`x-kubernetes-int-or-string`, free-form maps into `x-kubernetes-preserve-unknown-fields`, and
JSON Schema 2020's numeric `exclusiveMinimum` into OpenAPI 3.0's boolean form.
"""

from __future__ import annotations

from typing import Any

from llmd_modelservice.spec import API_GROUP, API_VERSION, KIND, ModelServiceSpec
from llmd_modelservice.status import ModelServiceStatus

PLURAL = "modelservices"
KEEP = (
    "description",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
)


class SchemaError(Exception):
    pass


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON Schema node to a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["x-kubernetes-int-or-string"] = True
        if "description" in node:
            out["description"] = node["description"]
        if any(b.get("type") == "null" for b in node.get("anyOf", [])):
            out["nullable"] = True
        return out
    if "anyOf" in node:
        branches = [_resolve(b, defs) for b in node["anyOf"]]
        non_null = [b for b in branches if b.get("type") != "null"]
        nullable = len(non_null) < len(branches)
        if len(non_null) != 1:
            kinds = sorted(str(b.get("type")) for b in non_null)
            if kinds == ["integer", "number"]:
                non_null = [{"type": "number"}]
            else:
                raise SchemaError(f"cannot express a union of {kinds} structurally")
        inner = {**non_null[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        out = structural(inner, defs)
        if nullable:
            out["nullable"] = True
        if "default" in out and out["default"] is None:
            del out["default"]
        return out
    if "const" in node:
        out["type"] = "string" if isinstance(node["const"], str) else node.get("type", "string")
        out["enum"] = [node["const"]]
    kind = node.get("type")
    if kind is None and "enum" in node:
        kind = "string"
    if kind is None and "const" not in node:
        raise SchemaError(f"untyped schema node: {sorted(node)}")
    if kind is not None:
        out["type"] = kind
    for key in KEEP:
        if key in node:
            out[key] = node[key]
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in node:
            out[bound] = node[key]
            out[key] = True
    if "default" in node and not isinstance(node["default"], dict | list):
        out["default"] = node["default"]
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: structural(v, defs) for k, v in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(node.get("items", {}), defs)
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return structural(schema, defs)


def crd() -> dict[str, Any]:
    spec_schema = openapi_schema(ModelServiceSpec)
    status_schema = openapi_schema(ModelServiceStatus)
    root = {
        "type": "object",
        "description": "A model whose engines modelservice plans, starts and keeps healthy.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "llmd"},
        },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["msvc"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.kind"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }
