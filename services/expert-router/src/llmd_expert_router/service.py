"""The placement service: a load window, a planner and periodic rebalance rounds.

Usable as a library (``ExpertRouterService`` without any HTTP) and wrapped by ``http_api``.
Balancing is CPU work (tenths of a second for DeepSeek-V3 shapes), so rounds run in a worker
thread under a lock and the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from llmd_expert_router.load_window import LoadWindow
from llmd_expert_router.metrics import Metrics
from llmd_expert_router.placement import FloatArray, PlacementError, Topology
from llmd_expert_router.planner import Decision, Plan, Planner, PlannerConfig, Policy

log = structlog.get_logger("llmd_expert_router.service")


class ExpertRouterService:
    """Owns the load window and planner; every method is safe to call from the event loop."""

    def __init__(
        self,
        topology: Topology,
        *,
        window_s: float = 600.0,
        min_improvement: float = 0.05,
        history_size: int = 16,
        policy: Policy = Policy.AUTO,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topology = topology
        self.window = LoadWindow(topology, window_s)
        self.planner = Planner(
            PlannerConfig(
                topology=topology,
                min_improvement=min_improvement,
                history_size=history_size,
                policy=policy,
            )
        )
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._lock = asyncio.Lock()
        self._publish(self.planner.initial(clock()))

    @property
    def current(self) -> Plan | None:
        return self.planner.current

    def report(self, source: str, counts: npt.ArrayLike) -> int:
        """Add one load report; returns the reports in the window. ``PlacementError`` if bad."""
        try:
            self.window.add(source, counts, self.clock())
        except PlacementError:
            self.metrics.load_reports_rejected.inc()
            raise
        self.metrics.load_reports.labels(source=source).inc()
        self._update_window_gauges()
        return len(self.window)

    def window_total(self) -> FloatArray:
        total = self.window.total(self.clock())
        self._update_window_gauges()
        return total

    async def rebalance(self, *, force: bool = False) -> Decision:
        """One round: plan for the window, publish if it beats the current plan by the margin."""
        async with self._lock:
            load = self.window_total()
            start = time.perf_counter()
            decision = await asyncio.to_thread(
                self.planner.propose, load, self.clock(), force=force
            )
            self.metrics.rebalance_seconds.observe(time.perf_counter() - start)
        outcome = "published" if decision.published else "kept"
        if decision.current_imbalance is None:
            outcome = "empty"
        self.metrics.rebalances.labels(outcome=outcome).inc()
        for name, value in (
            ("current", decision.current_imbalance),
            ("candidate", decision.candidate_imbalance),
            ("round_robin", decision.round_robin_imbalance),
        ):
            if value is not None:
                self.metrics.imbalance.labels(placement=name).set(value)
        if decision.published and decision.plan is not None:
            self._publish(decision.plan)
        log.info("rebalance", outcome=outcome, **decision.to_dict())
        return decision

    async def run_periodic(self, interval_s: float) -> None:
        """Rebalance every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.rebalance()
            except Exception:  # a bad round must not stop the next ones
                log.exception("rebalance_failed")

    def load_file(self, path: Path) -> None:
        """Add the counts in ``path`` (JSON ``{"counts": [[...]]}`` / ``[[...]]``, or ``.npy``)."""
        self.report(f"file:{path.name}", read_load_file(path))

    def _publish(self, plan: Plan) -> None:
        self.metrics.plan_version.set(plan.version)
        self.metrics.moved_slots.set(plan.moved_slots)
        log.info("plan_published", **plan.summary())

    def _update_window_gauges(self) -> None:
        self.metrics.window_reports.set(len(self.window))
        self.metrics.window_tokens.set(self.window.tokens)


def read_load_file(path: Path) -> npt.NDArray[np.float64]:
    """``[L, E]`` counts from a ``.npy`` file or JSON (a matrix, or an object with ``counts``)."""
    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlacementError(f"load_file: cannot read {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("counts")
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"load_file: {path} holds no [layers][experts] counts") from None
