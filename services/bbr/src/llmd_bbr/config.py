"""BBR's settings: flags, or environment variables with the `BBR_` prefix (flags win)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmd_sdk.extproc import BodyMode
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BBR_"


class SettingsError(ValueError):
    """Settings that do not load; the message is one line per bad field."""


class BBRSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = Field("0.0.0.0", description="address every port binds to")
    grpc_port: int = Field(9004, ge=0, le=65535, description="ext_proc gRPC port")
    health_port: int = Field(9005, ge=0, le=65535, description="gRPC health port")
    metrics_port: int = Field(9094, ge=0, le=65535, description="Prometheus /metrics port")
    models_config: Path | None = Field(
        None, description="model file: aliases and LoRA adapters (YAML), reloaded on change"
    )
    reload_interval: float = Field(
        1.0, ge=0, description="seconds between checks of the model file (0: never reload)"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="larger request bodies get a 413"
    )
    require_model: bool = Field(
        True, description="a JSON body without `model` is a 400 (false: it passes untouched)"
    )
    early_streaming: bool = Field(
        True,
        description="in FULL_DUPLEX_STREAMED, route as soon as `model` arrives and stream the "
        "rest of the body through",
    )
    assume_body_mode: BodyMode = Field(
        BodyMode.BUFFERED,
        description="request body mode to assume when Envoy does not announce it in "
        "protocol_config (older Envoy)",
    )
    grace_period: float = Field(
        25.0, ge=0, description="seconds open streams get to finish after SIGTERM"
    )
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        description="seconds to keep accepting streams while reporting NOT_SERVING after "
        "SIGTERM, so load balancers notice before the port closes",
    )
    workers: int = Field(1, ge=1, le=256, description="processes sharing the ext_proc port")
    log_level: str = Field("INFO", description="DEBUG logs every routing decision")
    log_json: bool = Field(True, description="JSON log lines (false: console format)")
    tracing: bool = Field(False, description="one OpenTelemetry span per request")
    otlp_endpoint: str | None = Field(
        None, description="OTLP gRPC endpoint for spans (default: OTEL_EXPORTER_OTLP_ENDPOINT)"
    )

    @field_validator("assume_body_mode", mode="before")
    @classmethod
    def _body_mode(cls, value: Any) -> BodyMode:
        return BodyMode.parse(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r} is not a log level")
        return level

    def to_env(self) -> dict[str, str]:
        """These settings as `BBR_*` variables (how the parent hands them to its workers)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, BodyMode):
                text = value.name
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="llmd-bbr",
        description="Body-Based Router: an Envoy ext_proc service that puts the OpenAI request "
        "body's model into the X-Gateway-Model-Name header.",
        epilog="Every flag has an environment variable: BBR_<FLAG> (e.g. BBR_GRPC_PORT).",
    )
    for name, info in BBRSettings.model_fields.items():
        default = info.default.name if isinstance(info.default, BodyMode) else info.default
        help_text = f"{info.description} (default: {default})"
        if info.annotation is bool:
            ap.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            ap.add_argument(_flag(name), dest=name, metavar=name.upper(), help=help_text)
    # Internal: how the parent of `--workers N` starts each worker.
    ap.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    return ap


def load_settings(args: argparse.Namespace | None = None, **overrides: Any) -> BBRSettings:
    """Settings from the environment, overridden by flags that were given, then `overrides`."""
    given: dict[str, Any] = {}
    if args is not None:
        given = {
            name: getattr(args, name)
            for name in BBRSettings.model_fields
            if getattr(args, name, None) is not None
        }
    given.update(overrides)
    try:
        return BBRSettings(**given)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, given)) from None


def _one_line(exc: ValidationError, given: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        source = _flag(field) if field in given else f"{ENV_PREFIX}{field.upper()}"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{source}: {msg} (got {err.get('input')!r})")
    return "; ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, BBRSettings]:
    args = build_parser().parse_args(argv)
    return args, load_settings(args)
