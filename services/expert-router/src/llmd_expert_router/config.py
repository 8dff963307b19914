"""Settings of the expert-router service: flags override ``LLMD_EXPERT_ROUTER_*`` variables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmd_expert_router.placement import PlacementError, Topology
from llmd_expert_router.planner import Policy

ENV_PREFIX = "LLMD_EXPERT_ROUTER_"


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the field."""


class Settings(BaseSettings):
    """Service settings. Defaults describe a DeepSeek-V3 prefill group (EP32 over 4 nodes)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(8095, ge=0, le=65535)
    num_layers: int = Field(58, ge=1, description="MoE layers")
    num_experts: int = Field(256, ge=1, description="routed (logical) experts per layer")
    num_groups: int = Field(8, ge=0, description="expert groups (0: none)")
    num_ranks: int = Field(32, ge=1, description="EP ranks (GPUs) in the group")
    num_nodes: int = Field(4, ge=1, description="nodes the ranks are spread over")
    num_redundant: int = Field(32, ge=0, description="extra slots for replicas of hot experts")
    policy: Policy = Policy.AUTO
    min_improvement: float = Field(0.05, ge=0.0, lt=1.0)
    window_s: float = Field(600.0, gt=0.0, description="load window length")
    rebalance_interval_s: float = Field(60.0, ge=0.0, description="0 disables periodic rounds")
    history_size: int = Field(16, ge=1)
    load_file: Path | None = Field(None, description="JSON or .npy [L, E] counts read at start")
    log_level: str = "info"
    log_format: str = Field("json", pattern="^(json|console)$")

    @model_validator(mode="after")
    def _topology_is_consistent(self) -> Settings:
        try:
            self.topology()
        except PlacementError as exc:
            raise ValueError(str(exc)) from None
        return self

    def topology(self) -> Topology:
        return Topology.with_redundant(
            num_layers=self.num_layers,
            num_logical_experts=self.num_experts,
            num_ranks=self.num_ranks,
            num_redundant=self.num_redundant,
            num_nodes=self.num_nodes,
            num_groups=self.num_groups or None,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting; unset flags fall back to the environment, then defaults."""
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = info.description or ""
        default = info.default
        help_text = f"{help_text} (env {ENV_PREFIX}{name.upper()}, default {default})".strip()
        parser.add_argument(flag, dest=name, default=None, help=help_text)


def load_settings(namespace: argparse.Namespace | None = None) -> Settings:
    """Settings from flags and environment; ``ConfigError`` with one line on a bad value."""
    overrides: dict[str, Any] = {}
    if namespace is not None:
        overrides = {
            k: v for k, v in vars(namespace).items() if k in Settings.model_fields and v is not None
        }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    # Cross-field errors carry no location; their message already starts with the field.
    return f"{field}: {msg}" if field else msg


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmd-expert-router",
        description="Expert placement service for wide expert-parallel MoE deployments.",
    )
    add_arguments(parser)
    return parser.parse_args(argv)
