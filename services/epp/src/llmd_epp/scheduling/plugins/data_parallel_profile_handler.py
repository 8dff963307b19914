"""`data-parallel-profile-handler`: one profile over per-rank endpoints; the request goes to the
pod's primary port and the chosen rank travels in `x-data-parallel-host-port`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, ProfileHandler
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import (
    DATA_PARALLEL_HEADER,
    LLMRequest,
    ProfileResult,
    SchedulingError,
    SchedulingResult,
)

if TYPE_CHECKING:
    from llmd_epp.scheduling.profile import SchedulerProfile


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@register()
class DataParallelProfileHandler(ProfileHandler):
    TYPE = "data-parallel-profile-handler"

    class Params(PluginParams):
        primaryPort: int = Field(default=8000, ge=1, le=65535)

    def __init__(self, name: str = "", primary_port: int = 8000) -> None:
        super().__init__(name)
        self.primary_port = primary_port

    @classmethod
    def create(
        cls, name: str, params: DataParallelProfileHandler.Params, handle: Handle
    ) -> DataParallelProfileHandler:
        return cls(name, params.primaryPort)

    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        if results:
            return []
        if len(profiles) != 1:
            raise SchedulingError(
                f"data-parallel-profile-handler needs exactly one profile, got {len(profiles)}"
            )
        return list(profiles)

    def process_results(
        self,
        cycle: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        name, result = next(iter(results.items()))
        if result is None:
            raise SchedulingError(f"profile {name!r}: no endpoint passed the filters")
        return SchedulingResult(
            primary_profile=name,
            profile_results={name: result},
            headers={DATA_PARALLEL_HEADER: result.targets[0].key},
            destinations=[host_port(e.address, self.primary_port) for e in result.targets],
        )
