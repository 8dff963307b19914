"""One layer's placement as device tensors, ready for the dispatcher's index arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmd_expert_router.placement import LayerPlacement


@dataclass(frozen=True)
class DevicePlacement:
    """Replica tables of one MoE layer on ``device``.

    Attributes:
        num_ranks: EP ranks; physical slot ``p`` lives on rank ``p // slots_per_rank``.
        slots_per_rank: physical expert slots per rank.
        num_experts: logical experts.
        log2phy: ``[E, max_replicas]`` int64 slots of each expert; columns past an expert's
            replica count repeat its first slot (never selected).
        logcnt: ``[E]`` int64 replicas per expert.
        layer: the plain-Python placement these tables were built from.
    """

    num_ranks: int
    slots_per_rank: int
    num_experts: int
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    layer: LayerPlacement

    @classmethod
    def build(cls, layer: LayerPlacement, device: torch.device | str = "cpu") -> DevicePlacement:
        width = max(len(r) for r in layer.replicas)
        table = [list(r) + [r[0]] * (width - len(r)) for r in layer.replicas]
        return cls(
            num_ranks=layer.num_ranks,
            slots_per_rank=layer.slots_per_rank,
            num_experts=layer.num_logical_experts,
            log2phy=torch.tensor(table, dtype=torch.int64, device=device),
            logcnt=torch.tensor([len(r) for r in layer.replicas], dtype=torch.int64, device=device),
            layer=layer,
        )

    @property
    def num_physical(self) -> int:
        return self.num_ranks * self.slots_per_rank
