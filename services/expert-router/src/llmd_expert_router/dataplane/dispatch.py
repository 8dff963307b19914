"""Token dispatch to expert ranks and combine back, over ``torch.distributed`` all-to-all.

``dispatch`` sends every (token, expert) assignment of this rank to the rank holding the chosen
replica of that expert, and returns the rows this rank received grouped by local expert slot.
``combine`` sends the experts' outputs back along the same routes and reduces them into
``[T, H]`` with the gating weights. Both are collectives: every rank of the group calls them,
in the same order, with the same ``num_chunks``.

Protocol of one dispatch:
    1. Route on the device: pick a replica per assignment, sort assignments by
       (chunk, destination rank, local slot).
    2. Exchange the per-(chunk, rank, slot) counts with one small ``all_to_all_single`` and copy
       them to the host (the one host synchronisation: variable splits must be known there).
       A rank with out-of-range expert ids says so in the same message, so every rank raises
       the same ``ValueError`` instead of leaving its peers waiting in a collective.
    3. Per chunk: gather the rows into a send buffer, ``all_to_all_single`` with variable
       splits (asynchronous), then scatter the received rows into expert-major order. With
       several chunks the gathers and scatters of one chunk overlap the transfer of another
       (NCCL runs on its own stream; gloo on its own thread).

Layouts of the received rows:
    ``"expert"`` (default): grouped by local slot, ready for a grouped matmul.
    ``"source"``: as received (by chunk, then source rank, then slot), with ``slot_rows``, the
    row indices in slot order. This skips the scatter in ``dispatch`` and the matching gather in
    ``combine``; the experts gather their rows themselves (``ExpertPool`` accepts ``rows``), as a
    grouped-GEMM kernel that reads rows through an index list does for free.

Replica choice: the ``i``-th assignment (in token order) of expert ``e`` on rank ``r`` goes to
replica ``(i + r) mod replicas(e)``. Each replica gets an equal share (to within one token) of
every rank's traffic for that expert, and the rank offset spreads the remainders. Deterministic.

Precision: rows travel in the activation dtype (bf16 or fp32). ``combine`` reduces the ``k``
outputs of a token with one batched matmul against the gating weights cast to that dtype
(fp32 accumulation inside the matmul).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist

from llmd_expert_router.dataplane.layout import DevicePlacement

Layout = Literal["expert", "source"]


class _Waitable(Protocol):
    def wait(self) -> object: ...


class _Done:
    def wait(self) -> bool:
        return True


@dataclass(frozen=True)
class _Comm:
    """The process group, or a stand-in for a single process without ``torch.distributed``."""

    group: dist.ProcessGroup | None
    world_size: int
    rank: int

    @classmethod
    def of(cls, group: dist.ProcessGroup | None) -> _Comm:
        if dist.is_available() and dist.is_initialized():
            return cls(group, dist.get_world_size(group), dist.get_rank(group))
        if group is not None:
            raise ValueError("group: torch.distributed is not initialised")
        return cls(None, 1, 0)

    def all_to_all(
        self,
        out: torch.Tensor,
        inp: torch.Tensor,
        out_splits: Sequence[int] | None = None,
        in_splits: Sequence[int] | None = None,
        *,
        async_op: bool = False,
    ) -> _Waitable:
        if self.world_size == 1 and not (dist.is_available() and dist.is_initialized()):
            out.copy_(inp)
            return _Done()
        work = dist.all_to_all_single(
            out,
            inp,
            output_split_sizes=None if out_splits is None else list(out_splits),
            input_split_sizes=None if in_splits is None else list(in_splits),
            group=self.group,
            async_op=async_op,
        )
        return work if work is not None else _Done()


@dataclass(frozen=True)
class CombineHandle:
    """Routes of one dispatch, needed to send the expert outputs back.

    Row ranges are ``(start, stop)`` into the send buffer (this rank's assignments, sorted by
    chunk, destination rank and slot) and the receive buffer (rows from every source).
    """

    comm: _Comm
    layout: Layout
    num_tokens: int
    top_k: int
    chunk_tokens: tuple[tuple[int, int], ...]
    send_rows: tuple[tuple[int, int], ...]
    recv_rows: tuple[tuple[int, int], ...]
    send_splits: tuple[tuple[int, ...], ...]  # per chunk, rows to each destination rank
    recv_splits: tuple[tuple[int, ...], ...]  # per chunk, rows from each source rank
    order: torch.Tensor  # [N] assignment id (token * k + j) of each sorted send row
    expert_pos: torch.Tensor  # [N_recv] slot-order position of each received row
    weights: torch.Tensor  # [T, k] gating weights in the activation dtype


@dataclass(frozen=True)
class DispatchResult:
    """What this rank's experts must process.

    Attributes:
        expert_x: ``[N_recv, H]`` received rows: grouped by local slot (slot 0 first) in the
            ``"expert"`` layout, as received in the ``"source"`` layout.
        tokens_per_slot: rows for each local slot (``len == slots_per_rank``).
        handle: pass to ``combine`` with the experts' output in the same row order.
        slot_rows: ``"source"`` layout only: ``[N_recv]`` indices into ``expert_x`` listing
            slot 0's rows, then slot 1's, ...
    """

    expert_x: torch.Tensor
    tokens_per_slot: list[int]
    handle: CombineHandle
    slot_rows: torch.Tensor | None = None


def dispatch(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    placement: DevicePlacement,
    *,
    group: dist.ProcessGroup | None = None,
    num_chunks: int = 1,
    layout: Layout = "expert",
) -> DispatchResult:
    """Send each token to the ranks of its top-k experts.

    Args:
        hidden: ``[T, H]`` activations of this rank's tokens (bf16 or fp32; ``T`` may be 0 and
            may differ between ranks).
        topk_ids: ``[T, k]`` logical expert of each token's ``k`` choices.
        topk_weights: ``[T, k]`` gating weights.
        placement: this layer's replica tables (same on every rank).
        group: process group of the EP ranks (default: the world).
        num_chunks: pipeline depth; identical on every rank.
        layout: ``"expert"`` or ``"source"`` (see the module docstring).
    """
    comm = _Comm.of(group)
    _check_inputs(hidden, topk_ids, topk_weights, placement, comm, num_chunks)
    if layout not in ("expert", "source"):
        raise ValueError(f"layout: expected 'expert' or 'source', got {layout!r}")
    num_tokens, hidden_size = hidden.shape
    top_k = topk_ids.shape[1]
    dev = hidden.device
    slots, ranks, chunks = placement.slots_per_rank, comm.world_size, num_chunks
    n = num_tokens * top_k

    # 1. Routing on the device.
    flat = topk_ids.reshape(-1).to(torch.int64)
    bad = ((flat < 0) | (flat >= placement.num_experts)).sum().reshape(1, 1)
    experts = flat.clamp(0, placement.num_experts - 1)
    slot = _choose_replicas(experts, placement, comm.rank)
    token = torch.arange(n, device=dev) // top_k
    chunk = token * chunks // max(num_tokens, 1)
    key = chunk * placement.num_physical + slot
    order = torch.argsort(key, stable=True)
    send_counts = _count(key, chunks * placement.num_physical)

    # 2. Counts to every peer (and the bad-id flag), then the one host synchronisation.
    meta = torch.cat(
        [
            send_counts.view(chunks, ranks, slots).transpose(0, 1).reshape(ranks, chunks * slots),
            bad.expand(ranks, 1),
        ],
        dim=1,
    ).contiguous()
    recv_meta = torch.empty_like(meta)
    comm.all_to_all(recv_meta, meta)
    host = torch.stack([meta, recv_meta]).cpu().numpy()
    if host[1, :, -1].any():
        culprits = np.flatnonzero(host[1, :, -1]).tolist()
        raise ValueError(
            f"topk_ids: expert ids outside [0, {placement.num_experts}) on rank(s) {culprits}"
        )
    send_c = host[0, :, :-1].reshape(ranks, chunks, slots).transpose(1, 0, 2)  # [C, dst, S]
    recv_c = host[1, :, :-1].reshape(ranks, chunks, slots).transpose(1, 0, 2)  # [C, src, S]

    send_splits = send_c.sum(axis=2)
    recv_splits = recv_c.sum(axis=2)
    tokens_per_slot = recv_c.sum(axis=(0, 1))
    n_recv = int(tokens_per_slot.sum())
    # Expert-major layout: slot s holds its rows from (chunk 0, src 0), (chunk 0, src 1), ...
    seg = recv_c.reshape(chunks * ranks, slots)
    within = np.cumsum(seg, axis=0) - seg
    slot_start = np.cumsum(tokens_per_slot) - tokens_per_slot
    dest_start = (slot_start[None, :] + within).ravel()
    seg_flat = recv_c.ravel()  # receive-buffer order: chunk, source, slot
    recv_start = np.cumsum(seg_flat) - seg_flat
    tables = torch.from_numpy(np.stack([dest_start - recv_start, seg_flat])).to(dev)
    expert_pos = torch.repeat_interleave(tables[0], tables[1], output_size=n_recv)
    expert_pos += torch.arange(n_recv, device=dev)

    bounds = _chunk_bounds(num_tokens, chunks)
    chunk_tokens = tuple(itertools.pairwise(bounds))
    send_rows = _ranges(send_splits.sum(axis=1))
    recv_rows = _ranges(recv_splits.sum(axis=1))

    # 3. Gather, exchange and scatter, chunk by chunk.
    token_sorted = order // top_k
    send_x = hidden.new_empty(n, hidden_size)
    recv_x = hidden.new_empty(n_recv, hidden_size)
    works: list[_Waitable] = []
    for c in range(chunks):
        (a, b), (ra, rb) = send_rows[c], recv_rows[c]
        torch.index_select(hidden, 0, token_sorted[a:b], out=send_x[a:b])
        works.append(
            comm.all_to_all(
                recv_x[ra:rb],
                send_x[a:b],
                recv_splits[c].tolist(),
                send_splits[c].tolist(),
                async_op=chunks > 1,
            )
        )
    slot_rows = None
    if layout == "source":
        for work in works:
            work.wait()
        expert_x = recv_x
        slot_rows = torch.empty_like(expert_pos)
        slot_rows[expert_pos] = torch.arange(n_recv, device=dev)
    else:
        expert_x = hidden.new_empty(n_recv, hidden_size)
        for c in range(chunks):
            ra, rb = recv_rows[c]
            works[c].wait()
            expert_x.index_copy_(0, expert_pos[ra:rb], recv_x[ra:rb])

    handle = CombineHandle(
        comm=comm,
        layout=layout,
        num_tokens=num_tokens,
        top_k=top_k,
        chunk_tokens=chunk_tokens,
        send_rows=send_rows,
        recv_rows=recv_rows,
        send_splits=tuple(tuple(int(v) for v in row) for row in send_splits),
        recv_splits=tuple(tuple(int(v) for v in row) for row in recv_splits),
        order=order,
        expert_pos=expert_pos,
        weights=topk_weights.to(hidden.dtype),
    )
    return DispatchResult(expert_x, [int(v) for v in tokens_per_slot], handle, slot_rows)


def combine(expert_y: torch.Tensor, handle: CombineHandle) -> torch.Tensor:
    """Return the experts' outputs to their tokens: ``[T, H]`` = sum_j w[t, j] * y[t, j].

    ``expert_y`` is ``[N_recv, H]`` in the row order of ``DispatchResult.expert_x`` (in the
    dispatch's layout).
    """
    n_recv = handle.expert_pos.shape[0]
    if expert_y.dim() != 2 or expert_y.shape[0] != n_recv:
        raise ValueError(f"expert_y: expected [{n_recv}, H], got {list(expert_y.shape)}")
    hidden_size = expert_y.shape[1]
    k = handle.top_k
    chunks = len(handle.chunk_tokens)
    source_layout = handle.layout == "source"
    y_send = expert_y.contiguous() if source_layout else expert_y.new_empty(n_recv, hidden_size)
    back = expert_y.new_empty(handle.num_tokens * k, hidden_size)
    works: list[_Waitable] = []
    for c in range(chunks):
        (a, b), (ra, rb) = handle.send_rows[c], handle.recv_rows[c]
        if not source_layout:
            torch.index_select(expert_y, 0, handle.expert_pos[ra:rb], out=y_send[ra:rb])
        works.append(
            handle.comm.all_to_all(
                back[a:b],
                y_send[ra:rb],
                handle.send_splits[c],
                handle.recv_splits[c],
                async_op=chunks > 1,
            )
        )
    out = expert_y.new_empty(handle.num_tokens, hidden_size)
    weights = handle.weights.to(expert_y.dtype)
    for c in range(chunks):
        (a, b), (t0, t1) = handle.send_rows[c], handle.chunk_tokens[c]
        works[c].wait()
        if t1 == t0:
            continue
        unsorted = back.new_empty(b - a, hidden_size)
        unsorted.index_copy_(0, handle.order[a:b] - t0 * k, back[a:b])
        torch.bmm(
            weights[t0:t1].unsqueeze(1),
            unsorted.view(t1 - t0, k, hidden_size),
            out=out[t0:t1].unsqueeze(1),
        )
    return out


def _choose_replicas(experts: torch.Tensor, placement: DevicePlacement, rank: int) -> torch.Tensor:
    """Physical slot of each assignment (see the module docstring for the rule)."""
    if placement.log2phy.shape[1] == 1:
        return placement.log2phy[experts, 0]
    n = experts.shape[0]
    sorted_e, perm = torch.sort(experts, stable=True)
    per_expert = _count(experts, placement.num_experts)
    first = torch.cumsum(per_expert, 0) - per_expert
    occurrence = torch.empty_like(experts)
    occurrence[perm] = torch.arange(n, device=experts.device) - first[sorted_e]
    replica = (occurrence + rank) % placement.logcnt[experts]
    return placement.log2phy[experts, replica]


def _count(values: torch.Tensor, size: int) -> torch.Tensor:
    """``bincount`` without its host synchronisation on CUDA (it reads the maximum there)."""
    out = torch.zeros(size, dtype=torch.int64, device=values.device)
    return out.scatter_add_(0, values, torch.ones_like(values))


def _chunk_bounds(num_tokens: int, chunks: int) -> list[int]:
    """Token index where each chunk starts, plus the end; matches ``t * chunks // T``."""
    # Chunk c holds the tokens t with t * chunks // T == c, i.e. t >= ceil(c * T / chunks).
    return [-(-c * num_tokens // chunks) for c in range(chunks)] + [num_tokens]


def _ranges(sizes: np.ndarray) -> tuple[tuple[int, int], ...]:
    ends = np.cumsum(sizes)
    return tuple((int(e - s), int(e)) for s, e in zip(sizes, ends, strict=True))


def _check_inputs(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    placement: DevicePlacement,
    comm: _Comm,
    num_chunks: int,
) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected [T, H], got shape {list(hidden.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"topk_ids: expected [{hidden.shape[0]}, k], got shape {list(topk_ids.shape)}"
        )
    if topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
        raise ValueError(f"topk_ids: expected an integer dtype, got {topk_ids.dtype}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights: expected shape {list(topk_ids.shape)}, got {list(topk_weights.shape)}"
        )
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"hidden: dtype {hidden.dtype} is not float32, bfloat16 or float16")
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != hidden.device:
            raise ValueError(f"{name}: on {t.device}, hidden is on {hidden.device}")
    if placement.log2phy.device != hidden.device:
        raise ValueError(f"placement: on {placement.log2phy.device}, hidden is on {hidden.device}")
    if placement.num_ranks != comm.world_size:
        raise ValueError(
            f"placement: built for {placement.num_ranks} ranks, the group has {comm.world_size}"
        )
    if num_chunks < 1:
        raise ValueError(f"num_chunks: must be >= 1, got {num_chunks}")
