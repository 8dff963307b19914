"""`single-profile-handler`: run the one configured profile; its result is the decision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from llmd_epp.scheduling.framework import CycleState, ProfileHandler
from llmd_epp.scheduling.registry import register
from llmd_epp.scheduling.types import LLMRequest, ProfileResult, SchedulingError, SchedulingResult

if TYPE_CHECKING:
    from llmd_epp.scheduling.profile import SchedulerProfile


@register()
class SingleProfileHandler(ProfileHandler):
    TYPE = "single-profile-handler"

    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        return [] if results else list(profiles)[:1]

    def process_results(
        self,
        cycle: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        if len(results) != 1:
            raise SchedulingError(f"single-profile-handler expects one profile, ran {len(results)}")
        name, result = next(iter(results.items()))
        if result is None:
            raise SchedulingError(f"profile {name!r}: no endpoint passed the filters")
        return SchedulingResult(primary_profile=name, profile_results={name: result})
