"""What the scheduler works on: a request, endpoint snapshots, and what it decides.

Plain slotted dataclasses with no I/O, so the scheduler runs the same behind the ext_proc server
and inside a discrete-event simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFILLER_HEADER = "x-prefiller-host-port"
DATA_PARALLEL_HEADER = "x-data-parallel-host-port"
# vLLM pins a request to one data-parallel rank of its engine with this header (the lower-case
# form of llmd_sdk.dp_rank.DP_RANK_HEADER; HTTP/2 header names are lower case).
DP_RANK_HEADER = "x-data-parallel-rank"


@dataclass(slots=True)
class EndpointMetrics:
    """One scrape of an engine's `/metrics`, typed. `updated_at` is on the scheduler's clock."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0  # 0..1
    active_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_adapters: int = 0
    block_size: int = 0  # tokens per KV block, from cache_config_info (0 = unknown)
    num_gpu_blocks: int = 0
    updated_at: float = 0.0


@dataclass(slots=True, eq=False)
class Endpoint:
    """One serving endpoint (a pod's target port; one per data-parallel rank)."""

    key: str  # "ip:port": what goes into x-gateway-destination-endpoint
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    name: str = ""  # "namespace/pod" when known
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    rank: int = 0

    @classmethod
    def at(cls, key: str, **kw: Any) -> Endpoint:
        """An endpoint from its "ip:port" key."""
        host, _, port = key.rpartition(":")
        return cls(key=key, address=host.strip("[]"), port=int(port), **kw)


@dataclass(slots=True, eq=False)
class LLMRequest:
    """What the scheduler knows about one request.

    `prompt` is the routing text: a completions prompt, or the chat messages serialised
    (`messages_json`). `state` carries plugin data from scoring to the later hooks of the same
    request (pre_request, response_complete).
    """

    request_id: str
    model: str = ""
    target_model: str = ""
    prompt: str = ""
    messages: Sequence[Mapping[str, Any]] | None = None
    token_ids: Sequence[int] | None = None
    lora_adapter: str | None = None
    cache_salt: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    objective: str = ""
    priority: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    _input: bytes | None = None

    def user_input(self) -> bytes:
        """The bytes the approximate scorers hash and measure (cached)."""
        if self._input is None:
            self._input = self.prompt.encode()
        return self._input

    @property
    def input_chars(self) -> int:
        return len(self.user_input())


@dataclass(slots=True)
class ProfileResult:
    """The outcome of one scheduling profile: endpoints in preference order, and every
    candidate with its weighted score."""

    targets: list[Endpoint]
    scored: list[tuple[Endpoint, float]] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, float]:
        return {e.key: s for e, s in self.scored}


@dataclass(slots=True)
class SchedulingResult:
    """The decision: the primary profile's ordered endpoints, every profile's result, and the
    request headers the decision adds (P/D prefiller, data-parallel rank)."""

    primary_profile: str
    profile_results: dict[str, ProfileResult]
    headers: dict[str, str] = field(default_factory=dict)
    # Overrides the destination list (e.g. data-parallel primary-port rewriting).
    destinations: list[str] | None = None

    @property
    def targets(self) -> list[Endpoint]:
        return self.profile_results[self.primary_profile].targets

    @property
    def primary(self) -> Endpoint:
        return self.targets[0]

    def destination_list(self) -> list[str]:
        """`ip:port` values, primary first: the x-gateway-destination-endpoint list."""
        if self.destinations is not None:
            return self.destinations
        return [e.key for e in self.targets]


class SchedulingError(Exception):
    """No endpoint can serve the request (every profile's filters left none)."""
