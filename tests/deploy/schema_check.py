"""Schema validation of rendered objects, strict (unknown fields are errors).

Kubernetes' own kinds go through kubernetes-validate (the API's published schemas for the kubectl
version installed here, 1.32); custom resources through the OpenAPI v3 schema of their CRD:
upstream's InferencePool and InferenceObjective, our ModelService, and the fields of LWS, Gateway
API, Istio and the Prometheus Operator that the manifests use (tests/deploy/schemas). Pod templates
inside LeaderWorkerSets are validated as core PodTemplateSpecs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from deploy_tree import KUSTOMIZE, Obj, load_yaml_docs

K8S_VERSION = "1.32"
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def strict(node: Any) -> Any:
    """An OpenAPI v3 (Kubernetes structural) schema as a JSON Schema draft 4 one that rejects
    unknown fields, as the API server's strict field validation does."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    elif (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    out.pop("format", None)
    return out


def _load(name: str) -> Any:
    return yaml.safe_load((SCHEMAS / name).read_text())


def _crd_schema(path: Path) -> Any:
    (crd,) = load_yaml_docs(path)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def custom_schemas() -> dict[tuple[str, str], Any]:
    gateway = _load("gateway-api-v1.yaml")
    prom = _load("prometheus-operator-v1.yaml")
    raw = {
        ("inference.networking.k8s.io/v1", "InferencePool"): _load("inferencepool-v1.yaml"),
        ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective"): _load(
            "inferenceobjective-v1alpha2.yaml"
        ),
        ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): _load("leaderworkerset-v1.yaml"),
        ("gateway.networking.k8s.io/v1", "Gateway"): gateway["Gateway"],
        ("gateway.networking.k8s.io/v1", "HTTPRoute"): gateway["HTTPRoute"],
        ("networking.istio.io/v1alpha3", "EnvoyFilter"): _load("istio-envoyfilter-v1alpha3.yaml"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"): prom["ServiceMonitor"],
        ("monitoring.coreos.com/v1", "PodMonitor"): prom["PodMonitor"],
        ("llm-d.ai/v1alpha1", "ModelService"): _crd_schema(
            KUSTOMIZE / "base" / "modelservice" / "crd.yaml"
        ),
    }
    return {k: strict(v) for k, v in raw.items()}


CUSTOM = custom_schemas()


def errors_of(obj: Obj) -> list[str]:
    """Every schema error of one object, as 'Kind/name: path: message' lines."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    schema = CUSTOM.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if schema is not None:
        validator = jsonschema.Draft4Validator(schema)
        found = [
            f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        if obj["kind"] == "LeaderWorkerSet":
            lwt = obj["spec"]["leaderWorkerTemplate"]
            for side in ("leaderTemplate", "workerTemplate"):
                if side in lwt:
                    pod_template = {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{obj['metadata']['name']}-{side}"},
                        "template": lwt[side],
                    }
                    found += [f"{where}.{side}: {e}" for e in errors_of(pod_template)]
        return found
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "<root>"
        return [f"{where}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []
