"""Rank-aware request routing for wide-EP pools (re-exported from ``llmd_sdk.dp_rank``).

The algorithm lives in the SDK so the EPP's ``dp-rank-balancer`` plugin can use it too (services
never import each other); this module keeps the expert-router's public names.
"""

from llmd_sdk.dp_rank import (
    DP_RANK_HEADER,
    RankBalancer,
    RankChoice,
    RankLoad,
    RankRequest,
    choose_rank,
    least_loaded_rank,
    work_on,
)

__all__ = [
    "DP_RANK_HEADER",
    "RankBalancer",
    "RankChoice",
    "RankLoad",
    "RankRequest",
    "choose_rank",
    "least_loaded_rank",
    "work_on",
]
