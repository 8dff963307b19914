"""A scheduling profile: filters, then weighted scorers, then a picker."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from llmd_epp.scheduling.framework import CycleState, Filter, Picker, Plugin, Scorer
from llmd_epp.scheduling.types import Endpoint, LLMRequest, ProfileResult

# (extension point, plugin, seconds): lets the server time plugins without the core doing I/O.
PluginObserver = Callable[[str, Plugin, float], None]


class SchedulerProfile:
    """Runs filters in order, sums `weight * score` over the scorers, and lets the picker
    choose. A filter that leaves no endpoint fails the profile (None)."""

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        self.name = name
        self.filters = list(filters)
        self.scorers = list(scorers)
        self.picker = picker

    def plugins(self) -> list[Plugin]:
        return [*self.filters, *(s for s, _ in self.scorers), self.picker]

    def run(
        self,
        cycle: CycleState,
        request: LLMRequest,
        endpoints: list[Endpoint],
        observe: PluginObserver | None = None,
    ) -> ProfileResult | None:
        candidates = endpoints
        for flt in self.filters:
            if observe is None:
                candidates = flt.filter(cycle, request, candidates)
            else:
                t0 = time.perf_counter()
                candidates = flt.filter(cycle, request, candidates)
                observe("Filter", flt, time.perf_counter() - t0)
            if not candidates:
                return None
        totals = [0.0] * len(candidates)
        for scorer, weight in self.scorers:
            if observe is None:
                scores = scorer.score(cycle, request, candidates)
            else:
                t0 = time.perf_counter()
                scores = scorer.score(cycle, request, candidates)
                observe("Scorer", scorer, time.perf_counter() - t0)
            totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
        scored = list(zip(candidates, totals, strict=True))
        if observe is None:
            targets = self.picker.pick(cycle, request, scored)
        else:
            t0 = time.perf_counter()
            targets = self.picker.pick(cycle, request, scored)
            observe("Picker", self.picker, time.perf_counter() - t0)
        if not targets:
            return None
        return ProfileResult(targets=targets, scored=scored)
