"""Plugin registry: plugin type name -> class, and building instances from config entries.

Adding a plugin is one file: subclass the kind(s) it implements, declare a `Params` model with
upstream's parameter names, and decorate the class with `@register`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from llmd_epp.scheduling.framework import Handle, Plugin


class ConfigError(ValueError):
    """A configuration problem, as one line naming the plugin and the field."""


class PluginParams(BaseModel):
    """Base of plugin parameter models: upstream's camelCase names; unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go duration ("200ms", "1m30s") or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"not a duration (e.g. 200ms, 30s, 2m): {value!r}")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration parameter in seconds, written as Go writes durations."""


class PluginClass:
    """What the registry knows of one plugin type."""

    def __init__(self, cls: type[Plugin]) -> None:
        self.cls = cls
        self.params_model: type[PluginParams] | None = getattr(cls, "Params", None)


_REGISTRY: dict[str, PluginClass] = {}
P = TypeVar("P", bound=type[Plugin])


def register(*aliases: str) -> Callable[[P], P]:
    """Class decorator: register the plugin under its `TYPE` (and any legacy aliases)."""

    def deco(cls: P) -> P:
        for type_name in (cls.TYPE, *aliases):
            if not type_name:
                raise ValueError(f"{cls.__name__} has no TYPE")
            if type_name in _REGISTRY and _REGISTRY[type_name].cls is not cls:
                raise ValueError(f"plugin type {type_name!r} registered twice")
            _REGISTRY[type_name] = PluginClass(cls)
        return cls

    return deco


def registered_types() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def plugin_class(type_name: str) -> type[Plugin] | None:
    _load_builtins()
    entry = _REGISTRY.get(type_name)
    return entry.cls if entry else None


def _load_builtins() -> None:
    # Importing the package registers every built-in plugin.
    import llmd_epp.scheduling.plugins  # noqa: F401


def validation_line(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if loc else prefix
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown parameter")
        elif err["type"] == "missing":
            parts.append(f"{where}: required")
        else:
            parts.append(f"{where}: {err['msg'].lower()} (got {err.get('input')!r})")
    return "; ".join(parts)


def create_plugin(
    type_name: str,
    name: str,
    parameters: Mapping[str, Any] | None,
    handle: Handle,
) -> Plugin:
    """Instantiate one configured plugin; `ConfigError` names the plugin and the bad field."""
    _load_builtins()
    label = f"plugin {name!r}" if name == type_name else f"plugin {name!r} (type {type_name!r})"
    entry = _REGISTRY.get(type_name)
    if entry is None:
        raise ConfigError(
            f"{label}: unknown plugin type {type_name!r}; known types: {', '.join(sorted(_REGISTRY))}"
        )
    params: PluginParams | None = None
    if entry.params_model is not None:
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ConfigError(f"{label}: parameters must be a mapping, got {parameters!r}")
        try:
            params = entry.params_model.model_validate(dict(parameters or {}))
        except ValidationError as exc:
            raise ConfigError(f"{label}: {validation_line(exc, 'parameters')}") from None
    elif parameters:
        raise ConfigError(f"{label}: takes no parameters, got {sorted(parameters)}")
    factory = getattr(entry.cls, "create", None)
    try:
        plugin: Plugin = factory(name, params, handle) if factory else entry.cls(name)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    handle.plugins[name] = plugin
    return plugin
