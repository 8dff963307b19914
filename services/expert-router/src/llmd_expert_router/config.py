"""Settings of the expert-router: flags, then ``LLMD_EXPERT_ROUTER_*`` variables, then a YAML
file (``--config FILE``), then defaults (``llmd_sdk.settings``)."""

from __future__ import annotations

from pathlib import Path

from llmd_sdk.settings import ServiceSettings, SettingsConfigDict
from pydantic import Field

from llmd_expert_router.placement import Topology
from llmd_expert_router.planner import Policy

ENV_PREFIX = "LLMD_EXPERT_ROUTER_"


class Settings(ServiceSettings):
    """Service settings. Defaults describe a DeepSeek-V3 prefill group (EP32 over 4 nodes)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    host: str = "0.0.0.0"
    """Address the HTTP API listens on."""
    port: int = Field(8095, ge=0, le=65535)
    """Port of the HTTP API, /metrics and health (0: any free port)."""
    num_layers: int = Field(58, ge=1)
    """MoE layers of the model."""
    num_experts: int = Field(256, ge=1)
    """Routed (logical) experts per layer."""
    num_groups: int = Field(8, ge=0)
    """Expert groups of group-limited routing (0: none)."""
    num_ranks: int = Field(32, ge=1)
    """EP ranks (GPUs) in the group."""
    num_nodes: int = Field(4, ge=1)
    """Nodes the ranks are spread over (ranks are numbered node by node)."""
    num_redundant: int = Field(32, ge=0)
    """Extra expert slots for replicas of hot experts (experts + these divide over the ranks)."""
    policy: Policy = Policy.AUTO
    """Balancing policy: auto (hierarchical when groups divide over nodes), hierarchical, global."""
    min_improvement: float = Field(0.05, ge=0.0, lt=1.0)
    """Relative imbalance reduction a new plan must bring to be published."""
    window_s: float = Field(600.0, gt=0.0)
    """Length of the sliding load window, seconds."""
    rebalance_interval_s: float = Field(60.0, ge=0.0)
    """Seconds between rebalance rounds (0: only on POST /v1/rebalance)."""
    history_size: int = Field(16, ge=1)
    """Published plans kept for GET /v1/plans."""
    load_file: Path | None = None
    """JSON ([[...]] or {"counts": [[...]]}) or .npy [layers, experts] counts, planned at start."""
    log_level: str = "info"
    """Log level."""
    log_format: str = Field("json", pattern="^(json|console)$")
    """json (one object per line) or console."""

    def topology(self) -> Topology:
        """The EP group's shape; ``PlacementError`` (naming the field) if the numbers clash."""
        return Topology.with_redundant(
            num_layers=self.num_layers,
            num_logical_experts=self.num_experts,
            num_ranks=self.num_ranks,
            num_redundant=self.num_redundant,
            num_nodes=self.num_nodes,
            num_groups=self.num_groups or None,
        )


class PlanSettings(Settings):
    """Settings of ``llmd-expert-router plan`` (offline, one plan from ``load_file``)."""

    out: Path | None = None
    """Write the plan as JSON here."""
