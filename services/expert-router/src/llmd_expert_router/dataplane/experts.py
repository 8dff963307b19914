"""The experts a rank holds, run as grouped matmuls over the rows ``dispatch`` delivered.

Experts are SwiGLU MLPs as in DeepSeek-V3 and Qwen3-MoE: ``y = (silu(x W_gate) * (x W_up)) W_down``.
Weights are stored per local slot: ``w_gate_up [S, H, 2I]`` (gate columns first, then up) and
``w_down [S, I, H]``; replicas of one logical expert hold identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from llmd_expert_router.placement import LayerPlacement

GroupedMode = Literal["loop", "bmm"]


def swiglu_expert(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One expert on rows ``x [n, H]``."""
    gate, up = (x @ w_gate_up).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w_down


class ExpertPool:
    """A rank's local experts.

    ``mode="loop"`` runs one matmul pair per non-empty slot on its contiguous rows (no padding);
    ``mode="bmm"`` pads every slot to the busiest one and runs two batched matmuls (fewer kernel
    launches, wasted work when loads are uneven).
    """

    def __init__(
        self, w_gate_up: torch.Tensor, w_down: torch.Tensor, *, mode: GroupedMode = "loop"
    ) -> None:
        if w_gate_up.dim() != 3 or w_down.dim() != 3:
            raise ValueError("w_gate_up, w_down: expected [S, H, 2I] and [S, I, H]")
        slots, hidden, two_inter = w_gate_up.shape
        if two_inter % 2 or w_down.shape != (slots, two_inter // 2, hidden):
            raise ValueError(
                f"w_down: expected {[slots, two_inter // 2, hidden]}, got {list(w_down.shape)}"
            )
        if mode not in ("loop", "bmm"):
            raise ValueError(f"mode: expected 'loop' or 'bmm', got {mode!r}")
        self.w_gate_up = w_gate_up
        self.w_down = w_down
        self.mode = mode

    @property
    def num_slots(self) -> int:
        return int(self.w_gate_up.shape[0])

    @classmethod
    def from_logical(
        cls,
        w_gate_up: torch.Tensor,
        w_down: torch.Tensor,
        layer: LayerPlacement,
        rank: int,
        *,
        mode: GroupedMode = "loop",
    ) -> ExpertPool:
        """Take the local slots' experts out of all ``[E, ...]`` logical expert weights."""
        local = torch.tensor(layer.local_experts(rank), dtype=torch.int64, device=w_gate_up.device)
        return cls(
            w_gate_up.index_select(0, local).contiguous(),
            w_down.index_select(0, local).contiguous(),
            mode=mode,
        )

    def __call__(
        self,
        x: torch.Tensor,
        tokens_per_slot: Sequence[int],
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs ``[N, H]`` for rows ``x [N, H]``, in the same row order.

        Without ``rows``, ``x`` is grouped by slot with the given counts. With ``rows`` (the
        ``slot_rows`` of a ``"source"``-layout dispatch), ``x[rows]`` is.
        """
        if len(tokens_per_slot) != self.num_slots or sum(tokens_per_slot) != x.shape[0]:
            raise ValueError(
                f"tokens_per_slot: {len(tokens_per_slot)} slots summing to "
                f"{sum(tokens_per_slot)}, expected {self.num_slots} slots summing to {x.shape[0]}"
            )
        if rows is not None:
            if rows.shape != (x.shape[0],):
                raise ValueError(f"rows: expected [{x.shape[0]}], got {list(rows.shape)}")
            grouped = self(x.index_select(0, rows), tokens_per_slot)
            return torch.empty_like(x).index_copy_(0, rows, grouped)
        if self.mode == "bmm":
            return self._bmm(x, tokens_per_slot)
        out = torch.empty_like(x)
        start = 0
        for s, count in enumerate(tokens_per_slot):
            if count:
                seg = slice(start, start + count)
                out[seg] = swiglu_expert(x[seg], self.w_gate_up[s], self.w_down[s])
            start += count
        return out

    def _bmm(self, x: torch.Tensor, tokens_per_slot: Sequence[int]) -> torch.Tensor:
        width = max(tokens_per_slot, default=0)
        if width == 0:
            return torch.empty_like(x)
        counts = torch.tensor(tokens_per_slot, device=x.device)
        slot_of_row = torch.repeat_interleave(
            torch.arange(self.num_slots, device=x.device), counts, output_size=x.shape[0]
        )
        first = torch.cumsum(counts, 0) - counts
        padded_row = slot_of_row * width + torch.arange(x.shape[0], device=x.device)
        padded_row -= first[slot_of_row]
        padded = x.new_zeros(self.num_slots * width, x.shape[1])
        padded.index_copy_(0, padded_row, x)
        gate, up = torch.bmm(padded.view(self.num_slots, width, -1), self.w_gate_up).chunk(2, -1)
        y = torch.bmm(F.silu(gate) * up, self.w_down).view(self.num_slots * width, -1)
        return y.index_select(0, padded_row)
