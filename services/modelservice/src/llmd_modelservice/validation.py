"""Loading and validating `ModelService` specs, with every error listed one line each.

Structural errors come from pydantic (all of them at once); cross-field rules run afterwards and
are also collected rather than raised one by one, so a user fixes a spec in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmd_modelservice.spec import ModelService


class SpecError(Exception):
    """A spec that cannot be used; `errors` holds one readable line per problem."""

    def __init__(self, errors: Sequence[str], source: str = "spec") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: {len(self.errors)} error(s)"
        return "\n".join([head, *(f"  - {e}" for e in self.errors)])


def _loc(parts: Iterable[int | str]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "(root)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("missing", "extra_forbidden"):
            lines.append(f"{loc}: {msg.lower() if err['type'] == 'missing' else 'unknown field'}")
        else:
            lines.append(f"{loc}: {msg} (got {_short(err.get('input'))})")
    return lines


def semantic_errors(ms: ModelService) -> list[str]:
    """Rules that span fields; each message names the field to change."""
    s = ms.spec
    errs: list[str] = []
    for name, par in [("spec.parallelism", s.parallelism)] + (
        [("spec.prefill.parallelism", s.prefill.parallelism)] if s.prefill else []
    ):
        if par.data_local is not None:
            if par.data_local > par.data:
                errs.append(f"{name}.dataLocal: {par.data_local} exceeds data ({par.data})")
            elif par.data % par.data_local:
                errs.append(
                    f"{name}.dataLocal: data ({par.data}) is not a multiple of "
                    f"dataLocal ({par.data_local})"
                )
    if s.prefill is not None and s.role != "decode":
        errs.append(
            f"spec.role: must be 'decode' when spec.prefill is set (got {s.role!r}); "
            "the main group serves decode in P/D"
        )
    if (s.role != "both" or s.prefill is not None) and s.kv_transfer is None:
        errs.append("spec.kvTransfer: required for P/D roles (prefill/decode need a KV connector)")
    names = list(ms.served_names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errs.append(f"spec.model.servedNames: duplicate names {dupes}")
    lora_names = [lo.name for lo in s.loras]
    dupes = sorted({n for n in lora_names if lora_names.count(n) > 1})
    if dupes:
        errs.append(f"spec.loras: duplicate adapter names {dupes}")
    clash = sorted(set(lora_names) & set(names))
    if clash:
        errs.append(f"spec.loras: adapter names {clash} collide with served model names")
    if s.restart.backoff_initial_seconds > s.restart.backoff_max_seconds:
        errs.append(
            f"spec.restart.backoffInitialSeconds: {s.restart.backoff_initial_seconds} exceeds "
            f"backoffMaxSeconds ({s.restart.backoff_max_seconds})"
        )
    if s.engine.command is not None and not s.engine.command:
        errs.append("spec.engine.command: must not be empty when set")
    if not s.health.path.startswith("/"):
        errs.append(f"spec.health.path: must start with '/' (got {s.health.path!r})")
    total = sum(g.replicas for g in ms.groups())
    if s.local.base_port and s.local.base_port + total > 65535:
        errs.append(
            f"spec.local.basePort: {s.local.base_port} + {total} replicas runs past port 65535"
        )
    objectives = [o.name for o in s.router.objectives]
    dupes = sorted({n for n in objectives if objectives.count(n) > 1})
    if dupes:
        errs.append(f"spec.router.objectives: duplicate names {dupes}")
    return errs


def parse_model_service(doc: Any, source: str = "spec") -> ModelService:
    """Validate one parsed document; raise `SpecError` listing every problem."""
    if not isinstance(doc, dict):
        raise SpecError([f"(root): expected a mapping, got {type(doc).__name__}"], source)
    try:
        ms = ModelService.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc), source) from None
    errs = semantic_errors(ms)
    if errs:
        raise SpecError(errs, source)
    return ms


def load_specs(paths: Sequence[str | Path]) -> list[ModelService]:
    """Read YAML files (several documents each allowed); collect errors across all of them."""
    out: list[ModelService] = []
    problems: list[str] = []
    for path in paths:
        p = Path(path)
        try:
            docs = [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d is not None]
        except OSError as exc:
            problems.append(f"{p}: cannot read: {exc.strerror or exc}")
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            problems.append(f"{p}:{where}: invalid YAML: {problem}")
            continue
        if not docs:
            problems.append(f"{p}: no ModelService document found")
        for i, doc in enumerate(docs):
            source = f"{p}" if len(docs) == 1 else f"{p}[{i}]"
            try:
                out.append(parse_model_service(doc, source))
            except SpecError as exc:
                problems.extend(f"{source}: {e}" for e in exc.errors)
    seen: dict[str, int] = {}
    for ms in out:
        key = f"{ms.metadata.namespace}/{ms.name}"
        seen[key] = seen.get(key, 0) + 1
    problems.extend(f"metadata.name: {k} is declared {n} times" for k, n in seen.items() if n > 1)
    if problems:
        raise SpecError(problems, source="invalid ModelService spec")
    return out
