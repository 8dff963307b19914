"""Data plane of wide expert parallelism (needs torch: ``pip install llmd-expert-router[torch]``).

``dispatch``/``combine`` move tokens to the ranks of their experts and back over
``torch.distributed`` all-to-all (NCCL on GPUs, gloo on CPUs: the same code); ``ExpertPool`` runs
a rank's experts; ``EPMoE`` chains the three; ``reference_moe`` is the single-process oracle.
"""

from llmd_expert_router.dataplane.dispatch import (
    CombineHandle,
    DispatchResult,
    Layout,
    combine,
    dispatch,
)
from llmd_expert_router.dataplane.experts import ExpertPool, swiglu_expert
from llmd_expert_router.dataplane.layout import DevicePlacement
from llmd_expert_router.dataplane.moe import EPMoE, reference_moe

__all__ = [
    "CombineHandle",
    "DevicePlacement",
    "DispatchResult",
    "EPMoE",
    "ExpertPool",
    "Layout",
    "combine",
    "dispatch",
    "reference_moe",
    "swiglu_expert",
]
