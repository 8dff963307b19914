"""Flow-control policy plugin types, so configs that name them load.

Within a priority band requests leave in arrival order (`fcfs-ordering-policy`). Across the
flows of a band (`x-gateway-inference-fairness-id`), `round-robin-fairness-policy` takes turns
and `global-strict-fairness-policy` serves the oldest request first.
"""

from __future__ import annotations

from llmd_epp.scheduling.framework import Plugin
from llmd_epp.scheduling.registry import register


@register()
class FcfsOrderingPolicy(Plugin):
    TYPE = "fcfs-ordering-policy"


@register()
class GlobalStrictFairnessPolicy(Plugin):
    TYPE = "global-strict-fairness-policy"


@register()
class RoundRobinFairnessPolicy(Plugin):
    TYPE = "round-robin-fairness-policy"
