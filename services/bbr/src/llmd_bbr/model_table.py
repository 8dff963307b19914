"""The model table: aliases and LoRA adapters, read from a ConfigMap-style YAML file.

Two shapes are read, in one file or mixed across its YAML documents:

1. BBR's own document::

       baseModels: [meta-llama/Llama-3.1-8B-Instruct]
       adapters:                       # LoRA adapter -> its base model
         meta-llama/Llama-3.1-8B-Instruct: [ski-resorts, movie-critique]
       aliases:                        # name clients use -> name the pool serves
         llama: meta-llama/Llama-3.1-8B-Instruct          # route only
         gpt-4o: {target: movie-critique, rewrite: true}  # route and rewrite the body

2. The ConfigMaps of gateway-api-inference-extension's BBR (`data.baseModel`, and
   `data.adapters` holding a YAML list), one per document or in a `kind: List`, exactly as
   `kubectl get configmap -l inference.networking.k8s.io/bbr-managed=true -o yaml` prints them.
   A ConfigMap may also carry `data.aliases` (a YAML mapping, as above): an llmd extension.

Parsing is pure (`parse_table(text)`); every problem is one line naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmd_bbr.body import BodyRejected, check_model


class TableError(ValueError):
    """A model file BBR will not load; the message is one line."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one requested model goes."""

    model: str  # X-Gateway-Model-Name: the name the HTTPRoute matches
    base_model: str | None  # X-Gateway-Base-Model-Name: the adapter's base, or the base itself
    rewrite_to: str | None  # a new body `model`, when an alias asks for it
    alias: str | None = None  # the alias the client used, if any


@dataclass(frozen=True, slots=True)
class Alias:
    target: str
    rewrite: bool = False


@dataclass(frozen=True)
class ModelTable:
    """An immutable snapshot; reloading builds a new one and swaps the reference."""

    aliases: Mapping[str, Alias] = field(default_factory=dict)
    adapter_base: Mapping[str, str] = field(default_factory=dict)
    base_models: frozenset[str] = frozenset()
    source: str = ""

    def resolve(self, requested: str) -> Route:
        alias = self.aliases.get(requested)
        name = alias.target if alias is not None else requested
        base = self.adapter_base.get(name)
        if base is None and name in self.base_models:
            base = name
        return Route(
            model=name,
            base_model=base,
            rewrite_to=name if alias is not None and alias.rewrite else None,
            alias=requested if alias is not None else None,
        )

    def __len__(self) -> int:
        return len(self.aliases) + len(self.adapter_base) + len(self.base_models)

    def summary(self) -> dict[str, int]:
        return {
            "aliases": len(self.aliases),
            "adapters": len(self.adapter_base),
            "base_models": len(self.base_models),
        }


EMPTY_TABLE = ModelTable()


# ----------------------------------------------------------------------------- file shapes
class _AliasSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    rewrite: bool = False


class _BBRDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    base_models: list[str] = Field(default_factory=list, alias="baseModels")
    adapters: dict[str, list[str]] = Field(default_factory=dict)
    aliases: dict[str, str | _AliasSpec] = Field(default_factory=dict)

    @field_validator("base_models", mode="before")
    @classmethod
    def _no_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("adapters", "aliases", mode="before")
    @classmethod
    def _no_mapping(cls, value: Any) -> Any:
        return {} if value is None else value


@dataclass
class _Builder:
    aliases: dict[str, Alias] = field(default_factory=dict)
    adapter_base: dict[str, str] = field(default_factory=dict)
    base_models: set[str] = field(default_factory=set)

    def base(self, name: str, where: str) -> None:
        self.base_models.add(_name(name, where))

    def adapter(self, adapter: str, base: str, where: str) -> None:
        adapter = _name(adapter, where)
        previous = self.adapter_base.get(adapter)
        if previous is not None and previous != base:
            raise TableError(f"{where}: adapter {adapter!r} is already mapped to base {previous!r}")
        self.adapter_base[adapter] = base

    def alias(self, name: str, spec: str | _AliasSpec, where: str) -> None:
        name = _name(name, where)
        target, rewrite = (spec, False) if isinstance(spec, str) else (spec.target, spec.rewrite)
        target = _name(target, f"{where}.target" if not isinstance(spec, str) else where)
        previous = self.aliases.get(name)
        if previous is not None and previous != Alias(target, rewrite):
            raise TableError(f"{where}: alias {name!r} is defined twice, differently")
        self.aliases[name] = Alias(target, rewrite)

    def build(self, source: str) -> ModelTable:
        for name, alias in self.aliases.items():
            if name == alias.target:
                raise TableError(f"aliases.{_key(name)}: an alias cannot point to itself")
            if alias.target in self.aliases:
                raise TableError(
                    f"aliases.{_key(name)}: target {alias.target!r} is itself an alias"
                    " (one hop only)"
                )
            if name in self.adapter_base or name in self.base_models:
                raise TableError(f"aliases.{_key(name)}: {name!r} is also a served model name")
        return ModelTable(
            aliases=dict(self.aliases),
            adapter_base=dict(self.adapter_base),
            base_models=frozenset(self.base_models | set(self.adapter_base.values())),
            source=source,
        )


def _key(name: Any) -> str:
    """A name as it may appear in a one-line message."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TableError(f"{where}: expected a model name (string), got {type(value).__name__}")
    try:
        return check_model(value.strip())
    except BodyRejected as exc:
        raise TableError(f"{where}: {exc.message}") from None


def parse_table(text: str, source: str = "<string>") -> ModelTable:
    """Parse a model file (every YAML document in it). Raises `TableError` (one line)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TableError(f"{where}not valid YAML: {problem}") from None
    builder = _Builder()
    for i, doc in enumerate(docs):
        prefix = f"document {i + 1}: " if len(docs) > 1 else ""
        try:
            _read_document(doc, builder)
        except TableError as exc:
            raise TableError(f"{prefix}{exc}") from None
    return builder.build(source)


def _read_document(doc: Any, builder: _Builder) -> None:
    if not isinstance(doc, dict):
        raise TableError(f"expected a mapping at the top level, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind == "List":
        for j, item in enumerate(doc.get("items") or []):
            try:
                _read_document(item, builder)
            except TableError as exc:
                raise TableError(f"items[{j}]: {exc}") from None
        return
    if kind == "ConfigMap":
        _read_configmap(doc, builder)
        return
    if kind is not None:
        raise TableError(f"kind: {kind!r} is not a ConfigMap (or List of them)")
    try:
        spec = _BBRDocument.model_validate(doc)
    except ValidationError as exc:
        raise TableError(_one_line(exc)) from None
    for i, base in enumerate(spec.base_models):
        builder.base(base, f"baseModels[{i}]")
    for base, adapters in spec.adapters.items():
        where = f"adapters.{_key(base)}"
        base = _name(base, where)
        builder.base(base, where)
        for i, adapter in enumerate(adapters):
            builder.adapter(adapter, base, f"{where}[{i}]")
    for name, alias_spec in spec.aliases.items():
        builder.alias(name, alias_spec, f"aliases.{_key(name)}")


def _read_configmap(doc: dict[str, Any], builder: _Builder) -> None:
    meta = doc.get("metadata") or {}
    label = f"ConfigMap {meta.get('name', '?')}"
    data = doc.get("data") or {}
    if not isinstance(data, dict):
        raise TableError(f"{label}: data must be a mapping")
    base = data.get("baseModel")
    aliases_raw = data.get("aliases")
    if base is None and aliases_raw is None:
        raise TableError(f"{label}: data.baseModel is missing or empty")
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise TableError(f"{label}: data.baseModel is missing or empty")
        base = _name(base, f"{label}: data.baseModel")
        builder.base(base, f"{label}: data.baseModel")
        for i, adapter in enumerate(_yaml_field(data.get("adapters"), list, label, "adapters")):
            if adapter is None or (isinstance(adapter, str) and not adapter.strip()):
                continue  # blank entries are skipped, as upstream does
            builder.adapter(adapter, base, f"{label}: data.adapters[{i}]")
    aliases = _yaml_field(aliases_raw, dict, label, "aliases")
    for name, spec in aliases.items():
        where = f"{label}: data.aliases.{_key(name)}"
        if isinstance(spec, dict):
            try:
                spec = _AliasSpec.model_validate(spec)
            except ValidationError as exc:
                raise TableError(f"{where}: {_one_line(exc)}") from None
        elif not isinstance(spec, str):
            raise TableError(f"{where}: expected a target name or {{target, rewrite}}")
        builder.alias(str(name), spec, where)


def _yaml_field(raw: Any, kind: type, label: str, key: str) -> Any:
    """A ConfigMap value holding YAML text (or, leniently, already-structured YAML)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return kind()
    value = raw
    if isinstance(raw, str):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise TableError(f"{label}: data.{key} is not valid YAML") from None
    if not isinstance(value, kind):
        what = "list" if kind is list else "mapping"
        raise TableError(f"{label}: data.{key} must be a YAML {what}")
    return value


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg'].lower()}" if loc else err["msg"].lower())
    return "; ".join(parts)


def table_from_lists(
    *,
    base_models: Iterable[str] = (),
    adapters: Mapping[str, Iterable[str]] | None = None,
    aliases: Mapping[str, str | tuple[str, bool]] | None = None,
) -> ModelTable:
    """Build a table in code (tests, embedding)."""
    builder = _Builder()
    for b in base_models:
        builder.base(b, "baseModels")
    for base, names in (adapters or {}).items():
        builder.base(base, "adapters")
        for a in names:
            builder.adapter(a, base, f"adapters.{base}")
    for name, spec in (aliases or {}).items():
        target, rewrite = (spec, False) if isinstance(spec, str) else spec
        builder.alias(name, _AliasSpec(target=target, rewrite=rewrite), f"aliases.{name}")
    return builder.build("<code>")
