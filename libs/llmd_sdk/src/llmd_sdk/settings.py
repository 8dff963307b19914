"""Service settings: one pydantic-settings class per service, read from CLI flags, environment
variables and an optional YAML file, with validation errors as one readable line per field.

    class EppSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="LLMD_EPP_")
        port: int = Field(9002, ge=1, le=65535)
        scrape_interval: float = Field(0.05, gt=0)

    def main() -> None:
        settings = load_or_exit(EppSettings)      # sys.argv, env, --config FILE; exit 2 on error

Precedence, highest first: CLI flags (`--scrape-interval 0.1`, nested `--epp.scrape-interval`),
environment (`LLMD_EPP_SCRAPE_INTERVAL`, nested with `__`), the YAML file, then defaults. The
YAML file is `yaml_path`, else `--config FILE` on the command line, else `<PREFIX>CONFIG`.
"""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _PydanticSettingsError

__all__ = [
    "ServiceSettings",
    "SettingsConfigDict",
    "SettingsError",
    "format_validation_error",
    "load_or_exit",
    "load_settings",
]

S = TypeVar("S", bound="ServiceSettings")
EXIT_USAGE = 2  # the exit status of a command-line usage error (as argparse uses)


class SettingsError(ValueError):
    """Settings that could not be loaded; `lines` holds one readable line per problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


@dataclass(frozen=True)
class _LoadRequest:
    argv: Sequence[str] | None
    yaml_data: dict[str, Any] | None
    prog: str


_REQUEST: ContextVar[_LoadRequest | None] = ContextVar("llmd_settings_request", default=None)


class ServiceSettings(BaseSettings):
    """Base class of every service's settings. Subclasses set `env_prefix` in `model_config`
    (e.g. `LLMD_EPP_`) and declare their fields with pydantic constraints."""

    model_config = SettingsConfigDict(
        env_prefix="LLMD_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
        use_attribute_docstrings=True,  # field docstrings become --help text
        cli_hide_none_type=True,
    )

    config: Path | None = None
    """The YAML file the settings were read from, if any (`--config FILE`, `<PREFIX>CONFIG`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # .env files are not read: a service's configuration is its flags, env and YAML.
        request = _REQUEST.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if request is not None and request.argv is not None:
            sources.append(
                CliSettingsSource(
                    settings_cls,
                    cli_parse_args=list(request.argv),
                    cli_prog_name=request.prog,
                    cli_exit_on_error=False,
                    cli_kebab_case=True,
                    cli_implicit_flags=True,
                )
            )
        sources.append(env_settings)
        if request is not None and request.yaml_data is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=request.yaml_data))
        sources.append(file_secret_settings)
        return tuple(sources)


def _take_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """`--config FILE` / `--config=FILE` from argv: the path, and argv without it."""
    rest: list[str] = []
    path: str | None = None
    items = iter(argv)
    for arg in items:
        if arg == "--config":
            path = next(items, None)
            if path is None:
                raise SettingsError(["--config: expected a file path"])
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError([f"{path}{where}: invalid YAML: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            [f"{path}: the top level must be a mapping of settings, not {type(data).__name__}"]
        )
    return data


def _env_config(cls: type[ServiceSettings]) -> str | None:
    prefix = str(cls.model_config.get("env_prefix") or "")
    value = os.environ.get(f"{prefix}CONFIG".upper()) or os.environ.get(f"{prefix}CONFIG")
    return value or None


@contextmanager
def _request(request: _LoadRequest) -> Iterator[None]:
    token = _REQUEST.set(request)
    try:
        yield
    finally:
        _REQUEST.reset(token)


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    yaml_path: str | Path | None = None,
    *,
    prog: str | None = None,
) -> S:
    """Build `cls` from CLI flags (`argv`; None reads no flags), the environment and a YAML
    file, over the defaults. Raises `SettingsError` with one line per problem."""
    config_flag, cli_args = _take_config_flag(argv) if argv is not None else (None, None)
    chosen = yaml_path or config_flag or _env_config(cls)
    path = Path(chosen) if chosen else None
    yaml_data = _read_yaml(path) if path is not None else None
    request = _LoadRequest(
        argv=cli_args,
        yaml_data=yaml_data,
        prog=prog or Path(sys.argv[0]).name or cls.__name__,
    )
    init: dict[str, Any] = {"config": path} if path is not None else {}
    try:
        with _request(request):
            return cls(**init)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, cls)) from None
    except _PydanticSettingsError as exc:
        message = str(exc).removeprefix("error parsing CLI: ")
        raise SettingsError([f"command line: {message}"]) from None


def load_or_exit(
    cls: type[S],
    argv: Sequence[str] | None = None,
    yaml_path: str | Path | None = None,
    *,
    prog: str | None = None,
    stream: TextIO | None = None,
) -> S:
    """For a service's `main()`: `load_settings` with `sys.argv[1:]` by default; on bad
    settings print one line per problem to stderr and exit with status 2, no traceback."""
    name = prog or Path(sys.argv[0]).name or cls.__name__
    try:
        return load_settings(cls, sys.argv[1:] if argv is None else argv, yaml_path, prog=name)
    except SettingsError as exc:
        _exit_with(exc, name, stream or sys.stderr)


def _exit_with(exc: SettingsError, prog: str, stream: TextIO) -> NoReturn:
    count = len(exc.lines)
    print(f"{prog}: invalid settings ({count} problem{'s' if count != 1 else ''}):", file=stream)
    for line in exc.lines:
        print(f"  {line}", file=stream)
    stream.flush()
    raise SystemExit(EXIT_USAGE)


# --- validation errors as one line per field --------------------------------------------------

_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown setting",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "json_invalid": "is not valid JSON",
    "path_type": "must be a file path",
    "url_parsing": "must be a URL",
    "url_scheme": "must be a URL with scheme {expected_schemes}",
}


def _message(error: ErrorDetails) -> str:
    template = _MESSAGES.get(error["type"])
    # Bounds of float fields arrive as floats: print 0, not 0.0.
    ctx = {
        k: int(v) if isinstance(v, float) and v.is_integer() else v
        for k, v in (error.get("ctx") or {}).items()
    }
    if template is not None:
        try:
            return template.format(**ctx)
        except (KeyError, IndexError):
            pass
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg[:1].lower() + msg[1:]


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value if value and not any(c.isspace() for c in value) else json.dumps(value)
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _contains_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_contains_secret(arg) for arg in typing.get_args(annotation))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _is_secret(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> bool:
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        if _contains_secret(annotation):
            return True
        model = _model_in(annotation)
    return False


def format_validation_error(
    exc: ValidationError, model: type[BaseModel] | None = None
) -> list[str]:
    """One line per error: `epp.scrape_interval: must be > 0 (got -1)`. Values of secret
    fields (SecretStr, SecretBytes) are shown as ***."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc) or "settings"
        line = f"{where}: {_message(error)}"
        if error["type"] != "missing":
            shown = "***" if _is_secret(model, loc) else _show(error.get("input"))
            line += f" (got {shown})"
        lines.append(line)
    return lines
