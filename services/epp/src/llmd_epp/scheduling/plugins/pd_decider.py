"""P/D deciders: whether a request, given the decode endpoint chosen for it, gets a separate
prefill. `prefix-based-pd-decider` disaggregates when the prompt's uncached part is at least
`nonCachedTokens` (estimated at 4 characters per token); `always-disagg-pd-decider` always does.
"""

from __future__ import annotations

from pydantic import Field

from llmd_epp.scheduling.framework import Handle, Plugin
from llmd_epp.scheduling.prefix_index import AVERAGE_CHARS_PER_TOKEN, PrefixMatch
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest


def prefix_state(request: LLMRequest, plugin_name: str) -> PrefixMatch | None:
    found = request.state.get(plugin_name)
    return found if isinstance(found, PrefixMatch) else None


class PDDecider(Plugin):
    """Decides whether to run the prefill profile for a request."""

    def disaggregate(self, request: LLMRequest, decode: Endpoint) -> bool:
        raise NotImplementedError


@register()
class AlwaysDisaggPDDecider(PDDecider):
    TYPE = "always-disagg-pd-decider"

    def disaggregate(self, request: LLMRequest, decode: Endpoint) -> bool:
        return True


@register()
class PrefixBasedPDDecider(PDDecider):
    TYPE = "prefix-based-pd-decider"

    class Params(PluginParams):
        nonCachedTokens: int = Field(default=0, ge=0)
        prefixPluginName: str = "prefix-cache-scorer"

    def __init__(
        self, name: str = "", non_cached_tokens: int = 0, prefix_plugin: str = "prefix-cache-scorer"
    ) -> None:
        super().__init__(name)
        self.non_cached_tokens = non_cached_tokens
        self.prefix_plugin = prefix_plugin

    @classmethod
    def create(
        cls, name: str, params: PrefixBasedPDDecider.Params, handle: Handle
    ) -> PrefixBasedPDDecider:
        return cls(name, params.nonCachedTokens, params.prefixPluginName)

    def disaggregate(self, request: LLMRequest, decode: Endpoint) -> bool:
        if self.non_cached_tokens <= 0:
            return True
        input_tokens = request.input_chars // AVERAGE_CHARS_PER_TOKEN
        if input_tokens < self.non_cached_tokens:
            return False
        pm = prefix_state(request, self.prefix_plugin)
        cached_tokens = pm.matched_chars(decode.key) // AVERAGE_CHARS_PER_TOKEN if pm else 0
        return input_tokens - cached_tokens >= self.non_cached_tokens
