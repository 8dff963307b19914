"""The scheduler: profile handler + profiles, and the request-lifecycle hooks of its plugins.

`Scheduler.schedule(request, endpoints, now)` is pure: no sockets, no clock reads (time comes
in as `now`), so a discrete-event simulator can drive it directly. State that outlives one
decision (approximate prefix LRU, in-flight counts, no-hit LRU) lives in the plugins and is
updated only through `pre_request`, `response_complete` and `endpoint_removed`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from llmd_epp.scheduling.framework import (
    CycleState,
    EndpointListener,
    Plugin,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseHeaders,
)
from llmd_epp.scheduling.profile import PluginObserver, SchedulerProfile
from llmd_epp.scheduling.types import (
    Endpoint,
    LLMRequest,
    ProfileResult,
    SchedulingError,
    SchedulingResult,
)


class Scheduler:
    """Runs the profiles the handler picks until it has what it needs, then combines them."""

    def __init__(
        self,
        profiles: Mapping[str, SchedulerProfile],
        handler: ProfileHandler,
        plugins: list[Plugin] | None = None,
    ) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one profile")
        self.profiles = dict(profiles)
        self.handler = handler
        seen: dict[int, Plugin] = {}
        for p in [handler, *(plugins or [])]:
            seen[id(p)] = p
        for prof in self.profiles.values():
            for p in prof.plugins():
                seen[id(p)] = p
        self.plugins = list(seen.values())
        self._pre = [p for p in self.plugins if isinstance(p, PreRequest)]
        self._resp_headers = [p for p in self.plugins if isinstance(p, ResponseHeaders)]
        self._complete = [p for p in self.plugins if isinstance(p, ResponseComplete)]
        self._listeners = [p for p in self.plugins if isinstance(p, EndpointListener)]
        self.observer: PluginObserver | None = None
        self.observe_every = 1
        self._cycles = 0

    def set_observer(self, observer: PluginObserver | None, every: int = 1) -> None:
        """Time plugin calls on one decision in `every` (the server feeds a Prometheus
        histogram with it; sampling keeps the timing cost off most decisions)."""
        self.observer = observer
        self.observe_every = max(1, every)

    def plugin(self, name: str) -> Plugin | None:
        return next((p for p in self.plugins if p.name == name), None)

    def schedule(
        self, request: LLMRequest, endpoints: list[Endpoint], now: float
    ) -> SchedulingResult:
        """Ordered endpoints for `request`; raises `SchedulingError` when none can serve."""
        if not endpoints:
            raise SchedulingError("no candidate endpoints")
        cycle = CycleState(now=now)
        self._cycles += 1
        observer = self.observer if (self._cycles - 1) % self.observe_every == 0 else None
        results: dict[str, ProfileResult | None] = {}
        for _ in range(len(self.profiles) + 1):
            names = self.handler.pick_profiles(cycle, request, self.profiles, results)
            names = [n for n in names if n not in results]
            if not names:
                break
            for name in names:
                profile = self.profiles.get(name)
                if profile is None:
                    raise SchedulingError(f"profile handler asked for unknown profile {name!r}")
                results[name] = profile.run(cycle, request, endpoints, observer)
        if observer is None:
            return self.handler.process_results(cycle, request, results)
        t0 = time.perf_counter()
        out = self.handler.process_results(cycle, request, results)
        observer("ProcessProfilesResults", self.handler, time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------- lifecycle hooks
    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        for p in self._pre:
            p.pre_request(request, result, now)

    def response_headers(self, request: LLMRequest, served: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self._resp_headers:
            out.update(p.response_headers(request, served))
        return out

    def response_complete(
        self,
        request: LLMRequest,
        served: str | None,
        now: float,
        usage: Mapping[str, Any] | None = None,
    ) -> None:
        for p in self._complete:
            p.response_complete(request, served, now, usage)

    def endpoint_removed(self, key: str) -> None:
        for p in self._listeners:
            p.endpoint_removed(key)
