"""The publish policy: compute a candidate placement and adopt it only when it pays.

Switching placements costs expert-weight copies, so a candidate replaces the current plan only
when, on the same load window, it lowers the imbalance factor by at least ``min_improvement``
(relative: ``candidate <= current * (1 - min_improvement)``). Every published plan gets the next
version number and is kept in a bounded history. Pure logic; time comes from the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from llmd_expert_router.balancer import align, rebalance, uses_hierarchy
from llmd_expert_router.placement import Placement, PlacementError, Topology, check_load


class Policy(StrEnum):
    """Which balancing policy to run."""

    AUTO = "auto"  # hierarchical when it applies (DeepSeek's rule), else global
    HIERARCHICAL = "hierarchical"
    GLOBAL = "global"


@dataclass(frozen=True)
class PlannerConfig:
    """Knobs of the planner.

    Attributes:
        topology: the EP group's shape.
        min_improvement: relative imbalance reduction a candidate must achieve to be published.
        history_size: published plans kept (the current one included).
        policy: balancing policy.
        refine: run the swap refinement after greedy packing.
    """

    topology: Topology
    min_improvement: float = 0.05
    history_size: int = 16
    policy: Policy = Policy.AUTO
    refine: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_improvement < 1.0:
            raise PlacementError(f"min_improvement: must lie in [0, 1), got {self.min_improvement}")
        if self.history_size < 1:
            raise PlacementError(f"history_size: must be >= 1, got {self.history_size}")
        if self.policy is Policy.HIERARCHICAL and not uses_hierarchy(self.topology):
            raise PlacementError(
                "policy: hierarchical needs num_nodes > 1 and num_groups divisible by num_nodes"
            )


@dataclass(frozen=True)
class Plan:
    """A published placement and how it was justified."""

    version: int
    created_at: float
    placement: Placement
    reason: str
    imbalance: float  # of this placement on the load it was planned for
    previous_imbalance: float  # of the plan it replaced (or round-robin) on that same load
    round_robin_imbalance: float  # a load-oblivious layout on that same load, for reference
    moved_slots: int  # slots whose expert changed relative to the previous plan
    planned_tokens: float  # total assignments in the load window

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "reason": self.reason,
            "imbalance": self.imbalance,
            "previous_imbalance": self.previous_imbalance,
            "round_robin_imbalance": self.round_robin_imbalance,
            "moved_slots": self.moved_slots,
            "planned_tokens": self.planned_tokens,
        }


@dataclass(frozen=True)
class Decision:
    """Outcome of one rebalance round."""

    published: bool
    reason: str
    current_imbalance: float | None  # current plan on the window (None: no load)
    candidate_imbalance: float | None
    round_robin_imbalance: float | None
    improvement: float | None  # relative: 1 - candidate / current
    plan: Plan | None  # the plan in force after this round

    def to_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "reason": self.reason,
            "current_imbalance": self.current_imbalance,
            "candidate_imbalance": self.candidate_imbalance,
            "round_robin_imbalance": self.round_robin_imbalance,
            "improvement": self.improvement,
            "version": None if self.plan is None else self.plan.version,
        }


class Planner:
    """Holds the current plan and history; decides whether a candidate is published."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self._history: deque[Plan] = deque(maxlen=config.history_size)
        self._next_version = 1
        self._round_robin = Placement.round_robin(config.topology)

    @property
    def current(self) -> Plan | None:
        return self._history[-1] if self._history else None

    def history(self) -> list[Plan]:
        """Published plans, newest first."""
        return list(reversed(self._history))

    def get(self, version: int) -> Plan | None:
        return next((p for p in self._history if p.version == version), None)

    def compute(self, load: npt.ArrayLike) -> Placement:
        """A candidate for ``load``, aligned to the current plan (no publishing)."""
        hierarchical = {Policy.AUTO: None, Policy.HIERARCHICAL: True, Policy.GLOBAL: False}
        candidate = rebalance(
            load,
            self.config.topology,
            hierarchical=hierarchical[self.config.policy],
            refine=self.config.refine,
        )
        current = self.current
        return align(candidate, None if current is None else current.placement)

    def initial(self, now: float) -> Plan:
        """Publish the plan for a uniform load (used before any load is seen)."""
        t = self.config.topology
        uniform = np.ones((t.num_layers, t.num_logical_experts))
        return self._publish(self.compute(uniform), uniform, "initial", now, planned_tokens=0.0)

    def propose(self, load: npt.ArrayLike, now: float, *, force: bool = False) -> Decision:
        """Plan for ``load``; publish if it beats the current plan by the margin, or ``force``."""
        w = check_load(load, self.config.topology)
        current = self.current
        if w.sum() <= 0:
            return Decision(False, "no load in window", None, None, None, None, current)
        rr = self._round_robin.imbalance(w)
        before = (current.placement if current else self._round_robin).imbalance(w)
        candidate = self.compute(w)
        after = candidate.imbalance(w)
        improvement = 1.0 - after / before
        if current is not None and not force and after > before * (1 - self.config.min_improvement):
            reason = f"improvement {improvement:.2%} below margin {self.config.min_improvement:.2%}"
            return Decision(False, reason, before, after, rr, improvement, current)
        if current is not None and candidate == current.placement:
            return Decision(False, "candidate equals current plan", before, after, rr, 0.0, current)
        plan = self._publish(candidate, w, "forced" if force else "rebalanced", now)
        return Decision(True, plan.reason, before, after, rr, improvement, plan)

    def _publish(
        self,
        placement: Placement,
        load: npt.ArrayLike,
        reason: str,
        now: float,
        planned_tokens: float | None = None,
    ) -> Plan:
        w = np.asarray(load, dtype=np.float64)
        current = self.current
        plan = Plan(
            version=self._next_version,
            created_at=now,
            placement=placement,
            reason=reason,
            imbalance=placement.imbalance(w),
            previous_imbalance=(current.placement if current else self._round_robin).imbalance(w),
            round_robin_imbalance=self._round_robin.imbalance(w),
            moved_slots=placement.moved_slots(current.placement if current else None),
            planned_tokens=float(w.sum()) if planned_tokens is None else planned_tokens,
        )
        self._next_version += 1
        self._history.append(plan)
        return plan
