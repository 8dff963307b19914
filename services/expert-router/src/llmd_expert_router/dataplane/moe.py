"""An expert-parallel MoE layer (dispatch, local experts, combine) and its reference."""

from __future__ import annotations

import torch
import torch.distributed as dist

from llmd_expert_router.dataplane.dispatch import Layout, combine, dispatch
from llmd_expert_router.dataplane.experts import ExpertPool, swiglu_expert
from llmd_expert_router.dataplane.layout import DevicePlacement


class EPMoE:
    """The routed-expert part of one MoE layer, spread over the ranks of ``group``.

    Gating (router logits to ``topk_ids``/``topk_weights``) and shared experts stay with the
    caller; this runs ``combine(experts(dispatch(...)))``.
    """

    def __init__(
        self,
        pool: ExpertPool,
        placement: DevicePlacement,
        *,
        group: dist.ProcessGroup | None = None,
        num_chunks: int = 1,
        layout: Layout = "expert",
    ) -> None:
        if pool.num_slots != placement.slots_per_rank:
            raise ValueError(
                f"pool: {pool.num_slots} slots, placement has {placement.slots_per_rank} per rank"
            )
        self.pool = pool
        self.placement = placement
        self.group = group
        self.num_chunks = num_chunks
        self.layout: Layout = layout
        self.last_tokens_per_slot: list[int] = []  # this rank's slot loads in the last call

    def __call__(
        self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        routed = dispatch(
            hidden,
            topk_ids,
            topk_weights,
            self.placement,
            group=self.group,
            num_chunks=self.num_chunks,
            layout=self.layout,
        )
        self.last_tokens_per_slot = routed.tokens_per_slot
        y = self.pool(routed.expert_x, routed.tokens_per_slot, routed.slot_rows)
        return combine(y, routed.handle)


def reference_moe(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """The same computation in one process over all ``E`` logical experts' weights."""
    num_tokens, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    rows = hidden.index_select(0, torch.arange(num_tokens * k, device=hidden.device) // k)
    y = torch.empty_like(rows)
    for e in torch.unique(flat).tolist():
        sel = torch.nonzero(flat == e).squeeze(1)
        y[sel] = swiglu_expert(rows[sel], w_gate_up[e], w_down[e])
    w = topk_weights.to(hidden.dtype).unsqueeze(1)
    return torch.bmm(w, y.view(num_tokens, k, hidden.shape[1])).squeeze(1)
