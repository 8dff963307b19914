"""BBR's settings: flags, `LLMD_BBR_*` environment variables, or a YAML file (`--config`).

Precedence, highest first: flags (`--grpc-port 9004`), environment (`LLMD_BBR_GRPC_PORT`), the
YAML file, defaults (the SDK's `ServiceSettings`). The model file (`--models-config`) is a
different file: the alias and LoRA table, reloaded while BBR runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmd_sdk.extproc import BodyMode
from llmd_sdk.settings import ServiceSettings, SettingsConfigDict, SettingsError, load_settings
from pydantic import Field, field_validator

ENV_PREFIX = "LLMD_BBR_"

__all__ = ["ENV_PREFIX", "BBRSettings", "SettingsError", "WorkerArgs", "parse_args"]


class BBRSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    host: str = "0.0.0.0"
    """Address every port binds to."""
    grpc_port: int = Field(9004, ge=0, le=65535)
    """ext_proc gRPC port (gRPC health answers here too)."""
    health_port: int = Field(9005, ge=0, le=65535)
    """gRPC health port: liveness, readiness, envoy.service.ext_proc.v3.ExternalProcessor."""
    metrics_port: int = Field(9094, ge=0, le=65535)
    """Prometheus /metrics port."""
    models_config: Path | None = None
    """Model file: aliases and LoRA adapters (YAML), reloaded when it changes."""
    reload_interval: float = Field(1.0, ge=0)
    """Seconds between checks of the model file (0: load once, never reload)."""
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    """Request bodies larger than this get a 413."""
    require_model: bool = True
    """A JSON body without `model` is a 400; false lets it through untouched."""
    early_scan_bytes: int = Field(4096, ge=0)
    """FULL_DUPLEX_STREAMED (and STREAMED with send_body_without_waiting): when `model` is
    within the first this-many bytes, route as soon as it has arrived and stream the rest of the
    body through; 0 turns this off (route at end of stream)."""
    assume_body_mode: str = "BUFFERED"
    """Request body mode to assume when Envoy does not announce it in protocol_config."""
    grace_period: float = Field(25.0, ge=0)
    """Seconds open streams get to finish after SIGTERM."""
    shutdown_delay: float = Field(0.0, ge=0)
    """Seconds to keep accepting streams while NOT_SERVING after SIGTERM (lets load balancers
    notice before the port closes)."""
    workers: int = Field(1, ge=1, le=256)
    """Processes sharing the ext_proc port (SO_REUSEPORT), supervised by this one."""
    log_level: str = "INFO"
    """DEBUG logs every routing decision."""
    log_json: bool = True
    """JSON log lines; false gives the console format."""
    tracing: bool = False
    """One OpenTelemetry span per request."""
    otlp_endpoint: str | None = None
    """OTLP gRPC endpoint for spans (default: OTEL_EXPORTER_OTLP_ENDPOINT)."""

    @field_validator("assume_body_mode")
    @classmethod
    def _body_mode(cls, value: str) -> str:
        return BodyMode.parse(value).name

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def body_mode(self) -> BodyMode:
        return BodyMode.parse(self.assume_body_mode)


class WorkerArgs(argparse.Namespace):
    """Internal flags with which the `--workers N` parent starts each worker."""

    worker_index: int | None = None
    ready_fd: int | None = None
    parent_fd: int | None = None


def _worker_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--worker-index", type=int)
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--parent-fd", type=int)
    return ap


def split_worker_args(argv: Sequence[str]) -> tuple[WorkerArgs, list[str]]:
    """The internal worker flags, and the service flags without them."""
    args, rest = _worker_parser().parse_known_args(list(argv), namespace=WorkerArgs())
    return args, rest


def parse_args(argv: Sequence[str]) -> tuple[WorkerArgs, BBRSettings]:
    """Worker flags and settings from `argv` (+ env, + `--config`). Raises `SettingsError`."""
    worker, rest = split_worker_args(argv)
    return worker, load_settings(BBRSettings, rest, prog="llmd-bbr")


def settings(**values: Any) -> BBRSettings:
    """Settings in code (tests, embedding): `values` over env over defaults."""
    return BBRSettings(**values)
