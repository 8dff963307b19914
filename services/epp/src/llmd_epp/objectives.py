"""InferenceObjective priorities: objective name -> priority.

A request names its objective in `x-gateway-inference-objective` (llm-d also reads
`x-llm-d-inference-objective`); the objective's `spec.priority` (default 0; negative means
sheddable) decides its flow-control band. Objectives come from a YAML file of
InferenceObjective documents (or a plain `{name: priority}` mapping), and in Kubernetes from the
pool's InferenceObjective resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from llmd_epp.scheduling.registry import ConfigError

OBJECTIVE_HEADERS = ("x-gateway-inference-objective", "x-llm-d-inference-objective")
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
DEFAULT_PRIORITY = 0


class Objectives:
    def __init__(self, priorities: Mapping[str, int] | None = None) -> None:
        self.priorities: dict[str, int] = dict(priorities or {})

    def objective_of(self, headers: Mapping[str, str]) -> str:
        for h in OBJECTIVE_HEADERS:
            v = headers.get(h)
            if v:
                return v.strip()
        return ""

    def priority(self, objective: str) -> int:
        return self.priorities.get(objective, DEFAULT_PRIORITY) if objective else DEFAULT_PRIORITY

    def set(self, name: str, priority: int) -> None:
        self.priorities[name] = priority

    def remove(self, name: str) -> None:
        self.priorities.pop(name, None)


def parse_objectives(text: str, source: str = "objectives") -> dict[str, int]:
    """InferenceObjective YAML documents, a list of them, or `{name: priority}`."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    out: dict[str, int] = {}
    items: list[Any] = []
    for doc in docs:
        if isinstance(doc, list):
            items.extend(doc)
        elif isinstance(doc, dict) and "kind" not in doc and "items" not in doc:
            for name, prio in doc.items():
                out[str(name)] = _priority(prio, f"{source}: {name}")
        elif isinstance(doc, dict) and "items" in doc:
            items.extend(doc["items"] or [])
        else:
            items.append(doc)
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise ConfigError(f"{source}[{i}]: not an InferenceObjective mapping")
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ConfigError(f"{source}[{i}].metadata.name: required")
        prio = (obj.get("spec") or {}).get("priority", DEFAULT_PRIORITY)
        out[str(name)] = _priority(prio, f"{source}[{i}].spec.priority")
    return out


def _priority(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: priority must be an integer, got {value!r}")
    return value
