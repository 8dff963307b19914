"""`active-request-scorer`: fewer requests in flight (as this EPP routed them), higher score.

Counts go up in `pre_request` (every profile's chosen endpoint) and down in
`response_complete`; an entry older than `requestTimeout` (default 2m) is dropped so a lost
completion cannot pin an endpoint. Score: 1 for an idle endpoint, else (max - n) / max with max
the highest count over all endpoints.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from llmd_epp.scheduling.framework import (
    CycleState,
    EndpointListener,
    Handle,
    PreRequest,
    ResponseComplete,
    Scorer,
)
from llmd_epp.scheduling.registry import Duration, PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest, SchedulingResult

DEFAULT_REQUEST_TIMEOUT = 120.0


@register()
class ActiveRequestScorer(Scorer, PreRequest, ResponseComplete, EndpointListener):
    TYPE = "active-request-scorer"

    class Params(PluginParams):
        requestTimeout: Duration = DEFAULT_REQUEST_TIMEOUT

    def __init__(self, name: str = "", request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        super().__init__(name)
        self.request_timeout = request_timeout if request_timeout > 0 else DEFAULT_REQUEST_TIMEOUT
        self.counts: dict[str, int] = {}
        # request id -> (started, endpoint keys), oldest first
        self._open: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    @classmethod
    def create(
        cls, name: str, params: ActiveRequestScorer.Params, handle: Handle
    ) -> ActiveRequestScorer:
        return cls(name, params.requestTimeout)

    def _expire(self, now: float) -> None:
        limit = now - self.request_timeout
        while self._open:
            rid, (started, keys) = next(iter(self._open.items()))
            if started > limit:
                break
            del self._open[rid]
            self._release(keys)

    def _release(self, keys: tuple[str, ...]) -> None:
        for k in keys:
            n = self.counts.get(k, 0)
            if n <= 1:
                self.counts.pop(k, None)
            else:
                self.counts[k] = n - 1

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        self._expire(cycle.now)
        counts = self.counts
        if not counts:
            return [1.0] * len(endpoints)
        top = max(counts.values())
        return [(top - counts.get(e.key, 0)) / top for e in endpoints]

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        self._expire(now)
        keys = tuple(p.targets[0].key for p in result.profile_results.values() if p.targets)
        if request.request_id in self._open:
            self._release(self._open.pop(request.request_id)[1])
        for k in keys:
            self.counts[k] = self.counts.get(k, 0) + 1
        self._open[request.request_id] = (now, keys)

    def response_complete(
        self,
        request: LLMRequest,
        served: str | None,
        now: float,
        usage: Mapping[str, Any] | None,
    ) -> None:
        entry = self._open.pop(request.request_id, None)
        if entry is not None:
            self._release(entry[1])

    def endpoint_removed(self, key: str) -> None:
        self.counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        return self.counts.get(key, 0)
