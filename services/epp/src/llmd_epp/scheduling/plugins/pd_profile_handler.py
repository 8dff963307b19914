"""`pd-profile-handler`: prefill/decode disaggregation.

The decode profile runs first. When a prefill profile is configured and the request's uncached
prompt is long enough, the prefill profile runs too; the decode endpoint is the destination and
the prefill endpoint goes to the decode side's routing sidecar in `x-prefiller-host-port`.

"Long enough" as upstream: with `threshold` > 0 (characters), prefill runs when
`len(prompt) - cached characters on the decode endpoint >= threshold` (cached characters from
the prefix plugin's state, `prefixPluginName`, in blocks of its size, else `hashBlockSize`);
`threshold: 0` always disaggregates. Newer configs name a decider plugin in
`deciderPluginName` (`prefix-based-pd-decider`, `always-disagg-pd-decider`) instead.
`primaryPort` (data parallel) rewrites the destination to that port and puts the chosen rank
endpoint in `x-data-parallel-host-port`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Handle, ProfileHandler
from llmd_epp.scheduling.plugins.data_parallel_profile_handler import host_port
from llmd_epp.scheduling.plugins.pd_decider import PDDecider, prefix_state
from llmd_epp.scheduling.prefix_index import AVERAGE_CHARS_PER_TOKEN
from llmd_epp.scheduling.registry import ConfigError, PluginParams, register
from llmd_epp.scheduling.types import (
    DATA_PARALLEL_HEADER,
    PREFILLER_HEADER,
    Endpoint,
    LLMRequest,
    ProfileResult,
    SchedulingError,
    SchedulingResult,
)

if TYPE_CHECKING:
    from llmd_epp.scheduling.profile import SchedulerProfile


@register()
class PdProfileHandler(ProfileHandler):
    TYPE = "pd-profile-handler"

    class Params(PluginParams):
        threshold: int = Field(default=0, ge=0)
        decodeProfile: str = "decode"
        prefillProfile: str = "prefill"
        prefixPluginType: str = "prefix-cache-scorer"
        prefixPluginName: str = ""
        hashBlockSize: int = Field(default=16 * AVERAGE_CHARS_PER_TOKEN, gt=0)
        primaryPort: int = Field(default=0, ge=0, le=65535)
        deciderPluginName: str = ""

    def __init__(
        self,
        name: str = "",
        *,
        threshold: int = 0,
        decode_profile: str = "decode",
        prefill_profile: str = "prefill",
        prefix_plugin: str = "prefix-cache-scorer",
        hash_block_size: int = 64,
        primary_port: int = 0,
        decider: PDDecider | None = None,
    ) -> None:
        super().__init__(name)
        self.threshold = threshold
        self.decode_profile = decode_profile
        self.prefill_profile = prefill_profile
        self.prefix_plugin = prefix_plugin
        self.hash_block_size = hash_block_size
        self.primary_port = primary_port
        self.decider = decider
        self.decisions = {"decode-only": 0, "prefill-decode": 0}

    @classmethod
    def create(cls, name: str, params: PdProfileHandler.Params, handle: Handle) -> PdProfileHandler:
        decider: PDDecider | None = None
        if params.deciderPluginName:
            found = handle.plugin(params.deciderPluginName)
            if found is None:
                raise ConfigError(
                    f"parameters.deciderPluginName: no plugin named {params.deciderPluginName!r} "
                    "is configured before it"
                )
            if not isinstance(found, PDDecider):
                raise ConfigError(
                    f"parameters.deciderPluginName: {params.deciderPluginName!r} is a "
                    f"{found.TYPE}, not a P/D decider"
                )
            decider = found
        return cls(
            name,
            threshold=params.threshold,
            decode_profile=params.decodeProfile,
            prefill_profile=params.prefillProfile,
            prefix_plugin=params.prefixPluginName or params.prefixPluginType,
            hash_block_size=params.hashBlockSize,
            primary_port=params.primaryPort,
            decider=decider,
        )

    def _wants_prefill(self, request: LLMRequest, decode: Endpoint) -> bool:
        if self.decider is not None:
            return self.decider.disaggregate(request, decode)
        if self.threshold <= 0:
            return True
        length = request.input_chars
        pm = prefix_state(request, self.prefix_plugin)
        cached = 0
        if pm is not None:
            block = pm.block_chars or self.hash_block_size
            cached = pm.matches.get(decode.key, 0) * block
        return length - min(cached, length) >= self.threshold

    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> list[str]:
        if self.decode_profile not in results:
            if self.decode_profile not in profiles:
                raise SchedulingError(f"pd-profile-handler: no profile {self.decode_profile!r}")
            return [self.decode_profile]
        decode = results[self.decode_profile]
        if decode is None or self.prefill_profile not in profiles:
            return []
        if self.prefill_profile in results:
            return []
        if self._wants_prefill(request, decode.targets[0]):
            self.decisions["prefill-decode"] += 1
            return [self.prefill_profile]
        self.decisions["decode-only"] += 1
        return []

    def process_results(
        self,
        cycle: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileResult | None],
    ) -> SchedulingResult:
        decode = results.get(self.decode_profile)
        if decode is None:
            raise SchedulingError("failed to find available decode workers")
        out = SchedulingResult(
            primary_profile=self.decode_profile, profile_results={self.decode_profile: decode}
        )
        if self.primary_port:
            out.headers[DATA_PARALLEL_HEADER] = decode.targets[0].key
            out.destinations = [host_port(e.address, self.primary_port) for e in decode.targets]
        prefill = results.get(self.prefill_profile)
        if prefill is not None:
            out.profile_results[self.prefill_profile] = prefill
            out.headers[PREFILLER_HEADER] = prefill.targets[0].key
        return out
