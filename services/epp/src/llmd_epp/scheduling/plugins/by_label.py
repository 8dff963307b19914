"""Label filters: `by-label` (keep endpoints whose `label` is one of `validValues`, or that lack
the label when `allowsNoLabel`), and the role filters `decode-filter` / `prefill-filter` on
llm-d's `llm-d.ai/role` label."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from llmd_epp.scheduling.framework import CycleState, Filter, Handle
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import Endpoint, LLMRequest

ROLE_LABEL = "llm-d.ai/role"
ROLE_PREFILL = "prefill"
ROLE_DECODE = "decode"
ROLE_BOTH = "both"  # deprecated spelling of prefill-decode
ROLE_PREFILL_DECODE = "prefill-decode"
ROLE_ENCODE_PREFILL = "encode-prefill"
ROLE_ENCODE_PREFILL_DECODE = "encode-prefill-decode"


@register()
class ByLabel(Filter):
    TYPE = "by-label"

    class Params(PluginParams):
        label: str = Field(min_length=1)
        validValues: list[str] = Field(default_factory=list)
        allowsNoLabel: bool = False

    def __init__(
        self, name: str, label: str, valid_values: Iterable[str], allows_no_label: bool = False
    ) -> None:
        super().__init__(name)
        self.label = label
        self.valid = frozenset(valid_values)
        self.allows_no_label = allows_no_label

    @classmethod
    def create(cls, name: str, params: ByLabel.Params, handle: Handle) -> ByLabel:
        return cls(name, params.label, params.validValues, params.allowsNoLabel)

    def filter(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[Endpoint]
    ) -> list[Endpoint]:
        label, valid, allow_missing = self.label, self.valid, self.allows_no_label
        out = []
        for e in endpoints:
            value = e.labels.get(label)
            if (value is None and allow_missing) or (value is not None and value in valid):
                out.append(e)
        return out


@register()
class DecodeFilter(ByLabel):
    """Decode-capable endpoints; unlabeled endpoints count as decode."""

    TYPE = "decode-filter"
    Params = None  # type: ignore[assignment]

    def __init__(self, name: str = "") -> None:
        super().__init__(
            name,
            ROLE_LABEL,
            (ROLE_DECODE, ROLE_PREFILL_DECODE, ROLE_BOTH, ROLE_ENCODE_PREFILL_DECODE),
            allows_no_label=True,
        )

    @classmethod
    def create(cls, name: str, params: object, handle: Handle) -> DecodeFilter:
        return cls(name)


@register()
class PrefillFilter(ByLabel):
    """Prefill-capable endpoints; the role label is required."""

    TYPE = "prefill-filter"
    Params = None  # type: ignore[assignment]

    def __init__(self, name: str = "") -> None:
        super().__init__(
            name,
            ROLE_LABEL,
            (
                ROLE_PREFILL,
                ROLE_ENCODE_PREFILL,
                ROLE_PREFILL_DECODE,
                ROLE_BOTH,
                ROLE_ENCODE_PREFILL_DECODE,
            ),
            allows_no_label=False,
        )

    @classmethod
    def create(cls, name: str, params: object, handle: Handle) -> PrefillFilter:
        return cls(name)
