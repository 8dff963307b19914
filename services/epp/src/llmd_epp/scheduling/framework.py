"""The plugin framework: the kinds of plugin a scheduling profile is made of, and the hooks
stateful plugins use to learn what happened to a request after it was scheduled.

A plugin is one object that may implement several kinds (the approximate prefix scorer is a
Scorer, a PreRequest and an EndpointListener). The scheduler finds the kinds with isinstance.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from llmd_epp.scheduling.types import Endpoint, LLMRequest, ProfileResult, SchedulingResult

if TYPE_CHECKING:
    from llmd_epp.scheduling.profile import SchedulerProfile


@dataclass(slots=True)
class CycleState:
    """One scheduling cycle: the clock reading it runs at, and data plugins share within it."""

    now: float
    data: dict[str, Any] = field(default_factory=dict)


class Plugin:
    """Base of every plugin: a type (the registry key) and an instance name (config `name`)."""

    TYPE: ClassVar[str] = ""

    def __init__(self, name: str = "") -> None:
        self.name = name or self.TYPE

    @property
    def typed_name(self) -> str:
        return f"{self.name}/{self.TYPE}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.typed_name}>"


class Filter(Plugin):
    """Keeps the endpoints that may serve the request."""

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[Endpoint]
    ) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    """Scores each endpoint in [0, 1]; the profile multiplies by the configured weight."""

    def score(
        self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        """One score per endpoint, in the order given."""
        raise NotImplementedError


class Picker(Plugin):
    """Chooses the ordered target list from the scored endpoints."""

    def pick(
        self, cycle: CycleState, request: LLMRequest, scored: list[tuple[Endpoint, float]]
    ) -> list[Endpoint]:
        raise NotImplementedError


class ProfileHandler(Plugin):
    """Decides which profiles run (possibly in several rounds) and combines their results."""

    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        """Names of the profiles to run next; empty when done."""
        raise NotImplementedError

    def process_results(
        self,
        cycle: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        """The final result; raises `SchedulingError` when the request cannot be placed."""
        raise NotImplementedError


class PreRequest(Plugin):
    """Told the decision once it is final, before the request goes to the engine."""

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        raise NotImplementedError


class ResponseHeaders(Plugin):
    """Adds headers to the response once the served endpoint is known (session affinity)."""

    def response_headers(self, request: LLMRequest, served: str) -> dict[str, str]:
        raise NotImplementedError


class ResponseComplete(Plugin):
    """Told when the response has finished (or the exchange ended), with the served endpoint
    key and the `usage` of the response when it was seen."""

    def response_complete(
        self,
        request: LLMRequest,
        served: str | None,
        now: float,
        usage: Mapping[str, Any] | None,
    ) -> None:
        raise NotImplementedError


class EndpointListener(Plugin):
    """Told when an endpoint leaves the pool, to drop its state."""

    def endpoint_removed(self, key: str) -> None:
        raise NotImplementedError


class PrepareData(Plugin):
    """Fetches data for a request before scheduling (e.g. prefix scores from kvmanager).

    The only async hook: the server awaits it at the I/O edge; a simulator can skip it when
    the plugin was given a synchronous data source.
    """

    async def prepare(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        raise NotImplementedError


class Handle:
    """What a plugin factory can reach: the other plugins of the configuration by name, the
    random source (seeded in tests and simulations) and service-provided dependencies."""

    def __init__(self, rng: random.Random | None = None, **deps: Any) -> None:
        self.plugins: dict[str, Plugin] = {}
        self.rng = rng or random.Random()
        self.deps: dict[str, Any] = dict(deps)

    def plugin(self, name: str) -> Plugin | None:
        return self.plugins.get(name)
