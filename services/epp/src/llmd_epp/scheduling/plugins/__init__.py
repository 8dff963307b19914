"""Built-in scheduling plugins; importing this package registers them all.

A new plugin is one module here (subclass the kinds it implements, a `Params` model with
upstream's parameter names, `@register()`), plus its import below.
"""

from llmd_epp.scheduling.plugins import (
    active_request_scorer,
    by_label,
    data_parallel_profile_handler,
    dp_rank_balancer,
    kv_cache_utilization_scorer,
    load_aware_scorer,
    lora_affinity_scorer,
    max_score_picker,
    no_hit_lru_scorer,
    pd_decider,
    pd_profile_handler,
    precise_prefix_cache_scorer,
    prefill_header_handler,
    prefix_cache_scorer,
    queue_scorer,
    random_picker,
    session_affinity_scorer,
    single_profile_handler,
    weighted_random_picker,
)

__all__ = [
    "active_request_scorer",
    "by_label",
    "data_parallel_profile_handler",
    "dp_rank_balancer",
    "kv_cache_utilization_scorer",
    "load_aware_scorer",
    "lora_affinity_scorer",
    "max_score_picker",
    "no_hit_lru_scorer",
    "pd_decider",
    "pd_profile_handler",
    "precise_prefix_cache_scorer",
    "prefill_header_handler",
    "prefix_cache_scorer",
    "queue_scorer",
    "random_picker",
    "session_affinity_scorer",
    "single_profile_handler",
    "weighted_random_picker",
]
