"""`prefill-header-handler`: puts the prefill profile's endpoint in `x-prefiller-host-port`
— the pre-request half of P/D that upstream configures as
its own plugin. `pd-profile-handler` sets the same header, so configs with or without this
entry behave alike."""

from __future__ import annotations

from llmd_epp.scheduling.framework import Handle, PreRequest
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import PREFILLER_HEADER, LLMRequest, SchedulingResult


@register()
class PrefillHeaderHandler(PreRequest):
    TYPE = "prefill-header-handler"

    class Params(PluginParams):
        prefillProfile: str = "prefill"

    def __init__(self, name: str = "", prefill_profile: str = "prefill") -> None:
        super().__init__(name)
        self.prefill_profile = prefill_profile

    @classmethod
    def create(
        cls, name: str, params: PrefillHeaderHandler.Params, handle: Handle
    ) -> PrefillHeaderHandler:
        return cls(name, params.prefillProfile)

    def pre_request(self, request: LLMRequest, result: SchedulingResult, now: float) -> None:
        prefill = result.profile_results.get(self.prefill_profile)
        if prefill is not None:
            result.headers[PREFILLER_HEADER] = prefill.targets[0].key
