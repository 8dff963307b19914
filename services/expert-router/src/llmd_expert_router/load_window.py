"""A sliding time window of per-layer, per-expert token counts.

Engines report how many tokens each of their experts processed since their last report; the
window keeps the reports of the last ``window_s`` seconds (from every source) and their sum is
the load the balancer plans for. Pure logic: time comes from the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmd_expert_router.placement import FloatArray, PlacementError, Topology, check_load


@dataclass(frozen=True)
class LoadReport:
    """One source's counts over one interval, stamped with the time it was received."""

    source: str
    timestamp: float
    counts: FloatArray


class LoadWindow:
    """Running sum of the reports received in the last ``window_s`` seconds."""

    def __init__(self, topology: Topology, window_s: float) -> None:
        if window_s <= 0:
            raise PlacementError(f"window_s: must be > 0, got {window_s}")
        self.topology = topology
        self.window_s = window_s
        self._reports: deque[LoadReport] = deque()
        self._sum = np.zeros((topology.num_layers, topology.num_logical_experts))

    def add(self, source: str, counts: npt.ArrayLike, now: float) -> LoadReport:
        """Validate and record a report; raises ``PlacementError`` naming the bad field."""
        arr = check_load(counts, self.topology).copy()
        arr.setflags(write=False)
        if self._reports and now < self._reports[-1].timestamp:
            now = self._reports[-1].timestamp  # keep the deque ordered if the clock steps back
        report = LoadReport(source, now, arr)
        self._reports.append(report)
        self._sum += arr
        self.expire(now)
        return report

    def expire(self, now: float) -> None:
        """Drop reports older than the window."""
        horizon = now - self.window_s
        while self._reports and self._reports[0].timestamp < horizon:
            self._sum -= self._reports.popleft().counts
        if not self._reports:
            self._sum[:] = 0.0  # no drift from float subtraction once empty

    def total(self, now: float) -> FloatArray:
        """``[L, E]`` tokens per expert over the window (a copy)."""
        self.expire(now)
        return np.clip(self._sum, 0.0, None)

    def sources(self, now: float) -> list[str]:
        self.expire(now)
        return sorted({r.source for r in self._reports})

    @property
    def tokens(self) -> float:
        """Token assignments in the window as of the last ``add``/``expire``."""
        return float(self._sum.sum())

    def __len__(self) -> int:
        return len(self._reports)

    def clear(self) -> None:
        self._reports.clear()
        self._sum[:] = 0.0
