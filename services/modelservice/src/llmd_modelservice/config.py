"""Settings of `llmd-modelservice serve`: flags, or environment variables `LLMD_MODELSERVICE_*`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from llmd_sdk.settings import ServiceSettings, SettingsConfigDict
from pydantic import Field


def _default_log_dir() -> Path:
    return Path.home() / ".cache" / "llmd" / "modelservice" / "logs"


class ServeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMD_MODELSERVICE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    hardware: Path | None = Field(default=None, description="HardwareProfile JSON; else detect")
    log_dir: Path = Field(default_factory=_default_log_dir, description="engine logs")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    watch_heartbeat_seconds: float = Field(default=15.0, gt=0)
    drain_on_shutdown: bool = True


class ReconcileSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMD_MODELSERVICE_", extra="ignore")

    namespace: str | None = Field(default=None, description="watch one namespace; all if unset")
    host: str = Field(default="0.0.0.0", description="health and metrics listen address")
    port: int = Field(default=8090, ge=0, le=65535)
    kubeconfig: Path | None = None
    resync_seconds: float = Field(default=60.0, gt=0)
    field_manager: str = "llmd-modelservice"
    kvmanager_endpoint: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
