"""Service settings: command-line flags, each with an `LLMD_EPP_*` environment variable.

Flag names follow upstream EPP's where it has them (`--grpc-port`, `--grpc-health-port`,
`--metrics-port`, `--pool-name`, `--pool-namespace`, `--config-file`, `--config-text`,
`--refresh-metrics-interval`). Bad values end the process with one line naming the flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from llmd_epp.scheduling.registry import ConfigError, parse_duration

ENV_PREFIX = "LLMD_EPP_"


@dataclass(slots=True)
class EPPSettings:
    host: str = "0.0.0.0"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    config_file: str = ""
    config_text: str = ""
    pool_name: str = ""
    pool_namespace: str = "default"
    kubeconfig: str = ""
    endpoints: str = ""
    endpoints_file: str = ""
    modelservice_url: str = ""
    modelservice_model: str = ""
    kvmanager_address: str = "127.0.0.1:9010"
    refresh_metrics_interval: str = ""
    metrics_failure_threshold: int = 3
    flow_control: str = "auto"
    queue_ttl: str = ""
    objectives_file: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    workers: int = 1
    debug_scores: bool = False
    plugin_timing_every: int = 8
    seed: int = -1
    drain_timeout: str = "5s"
    shutdown_delay: str = "0s"

    @property
    def source_kind(self) -> str:
        kinds = [
            k
            for k, on in (
                ("static", bool(self.endpoints or self.endpoints_file)),
                ("modelservice", bool(self.modelservice_url)),
                (
                    "kubernetes",
                    bool(self.pool_name)
                    and not self.endpoints
                    and not self.endpoints_file
                    and not self.modelservice_url,
                ),
            )
            if on
        ]
        if len(kinds) != 1:
            raise ConfigError(
                "endpoints: give exactly one source: --endpoints/--endpoints-file (static), "
                "--modelservice-url (local mode) or --pool-name (Kubernetes)"
            )
        return kinds[0]

    def duration(self, name: str) -> float | None:
        value = getattr(self, name)
        if not value:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"--{name.replace('_', '-')}: {exc}") from None


_DURATIONS = ("refresh_metrics_interval", "queue_ttl", "drain_timeout", "shutdown_delay")
# Durations where 0 means "none" rather than "unset".
_ZERO_ALLOWED = ("drain_timeout", "shutdown_delay")

_HELP = {
    "host": "address to bind the gRPC and metrics servers",
    "grpc_port": "ext_proc gRPC port",
    "grpc_health_port": "gRPC health port (liveness, readiness, ext_proc service)",
    "metrics_port": "Prometheus /metrics port (with --workers N, worker i uses port+i)",
    "config_file": "EndpointPickerConfig YAML file",
    "config_text": "EndpointPickerConfig YAML text (instead of --config-file)",
    "pool_name": "InferencePool name (Kubernetes endpoint source; also the pool metrics label)",
    "pool_namespace": "InferencePool namespace",
    "kubeconfig": "kubeconfig file (default: in-cluster config, then ~/.kube/config)",
    "endpoints": "static endpoints, ip:port,ip:port",
    "endpoints_file": "static endpoints YAML file (re-read when it changes)",
    "modelservice_url": "modelservice base URL; endpoints come from its watch stream",
    "modelservice_model": "only this model's endpoints from modelservice (default: all)",
    "kvmanager_address": "kvmanager KVIndex gRPC address for precise-prefix-cache-scorer",
    "refresh_metrics_interval": "metrics scrape interval (e.g. 50ms), overrides the config",
    "metrics_failure_threshold": "consecutive failed scrapes before an endpoint is unhealthy",
    "flow_control": "queue requests when saturated: auto (the flowControl feature gate), on, off",
    "queue_ttl": "longest wait in the flow-control queue (default: config or 30s)",
    "objectives_file": "InferenceObjective YAML (name -> priority)",
    "log_level": "DEBUG, INFO, WARNING, ERROR",
    "log_format": "json or console",
    "workers": "EPP processes sharing the ports (SO_REUSEPORT); use precise prefix scoring",
    "debug_scores": "export each endpoint's last score (llm_d_epp_endpoint_score)",
    "plugin_timing_every": "time plugins on one decision in N (1: every decision)",
    "seed": "random seed for pickers (-1: random)",
    "drain_timeout": "on SIGTERM, how long open streams may finish",
    "shutdown_delay": "on SIGTERM, how long to keep accepting streams while health reports "
    "NOT_SERVING, so the gateway stops sending here before the port closes (e.g. 5s)",
}


def parse_settings(
    argv: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> EPPSettings:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(
        prog="llmd-epp",
        description="Endpoint Picker: cache-aware inference scheduler behind Envoy ext_proc.",
    )
    defaults = EPPSettings()
    for f in fields(EPPSettings):
        flag = "--" + f.name.replace("_", "-")
        default: Any = getattr(defaults, f.name)
        env_key = ENV_PREFIX + f.name.upper()
        raw = env.get(env_key)
        help_text = f"{_HELP.get(f.name, '')} [env {env_key}]"
        if isinstance(default, bool):
            if raw is not None:
                default = raw.strip().lower() in ("1", "true", "yes", "on")
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        typ = type(default)
        if raw is not None:
            try:
                default = typ(raw)
            except ValueError:
                raise ConfigError(f"{env_key}: expected {typ.__name__}, got {raw!r}") from None
        parser.add_argument(flag, type=typ, default=default, help=help_text)
    ns = parser.parse_args(argv)
    settings = EPPSettings(**vars(ns))
    if settings.flow_control not in ("auto", "on", "off"):
        raise ConfigError(f"--flow-control: must be auto, on or off, got {settings.flow_control!r}")
    if settings.log_format not in ("json", "console"):
        raise ConfigError(f"--log-format: must be json or console, got {settings.log_format!r}")
    if settings.plugin_timing_every < 1:
        raise ConfigError("--plugin-timing-every: must be at least 1")
    if settings.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {settings.workers}")
    for port in ("grpc_port", "grpc_health_port", "metrics_port"):
        if not 0 <= getattr(settings, port) <= 65535:
            raise ConfigError(f"--{port.replace('_', '-')}: not a port: {getattr(settings, port)}")
    if settings.config_file and settings.config_text:
        raise ConfigError("--config-file and --config-text: give one, not both")
    # Durations are read at different times (--drain-timeout only on SIGTERM): check them all
    # now, so that a typo fails the start, not the shutdown.
    for name in _DURATIONS:
        value = settings.duration(name)
        # 0 would read as "unset" and silently fall back to the default.
        if value is not None and value <= 0 and name not in _ZERO_ALLOWED:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: must be positive, got {getattr(settings, name)!r}")
    return settings
