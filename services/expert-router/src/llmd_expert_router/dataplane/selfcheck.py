"""Distributed self-check: the EP MoE layer against the single-process reference, on every rank.

Each rank builds the same logical expert weights (same seed), its own tokens (different counts
per rank, possibly none), runs ``EPMoE`` over the process group, and compares its output with
``reference_moe`` on its own tokens. Cases cover uniform and skewed routing, experts and ranks
that receive no tokens, replicas from the balancer, pipelining, both grouped-matmul modes, bf16,
and out-of-range expert ids (every rank must raise the same error).

    python -m llmd_expert_router.dataplane.selfcheck --nprocs 4              # gloo on CPU
    python -m llmd_expert_router.dataplane.selfcheck --nprocs 2 --device cuda  # NCCL

Prints one line per case and rank; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llmd_expert_router.balancer import rebalance
from llmd_expert_router.dataplane.dispatch import Layout
from llmd_expert_router.dataplane.experts import ExpertPool, GroupedMode
from llmd_expert_router.dataplane.layout import DevicePlacement
from llmd_expert_router.dataplane.moe import EPMoE, reference_moe
from llmd_expert_router.placement import LayerPlacement, Topology

# NVLink multicast stays off on every process we start (a rule of the GPU machines).
NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


@dataclass(frozen=True)
class Case:
    """One scenario; ``tokens`` gives each rank's token count (cycled over the ranks)."""

    name: str
    num_experts: int = 16
    hidden: int = 32
    inter: int = 24
    top_k: int = 4
    tokens: tuple[int, ...] = (37,)
    redundant_per_rank: int = 0  # replica slots per rank, placed by the balancer
    zipf: float = 0.0  # 0: uniform expert choice; > 0: Zipf-skewed popularity
    active_experts: int | None = None  # restrict choices to the first n experts
    chunks: int = 1
    mode: GroupedMode = "loop"
    layout: Layout = "expert"
    dtype: str = "float32"
    bad_rank: int | None = None  # this rank sends an out-of-range expert id


CASES: tuple[Case, ...] = (
    Case("uniform_fp32"),
    Case("uneven_tokens_skewed_fp32", tokens=(53, 0, 7, 120), zipf=1.2),
    Case("zero_token_experts_fp32", tokens=(20, 31), active_experts=5),
    Case("replicas_fp32", tokens=(64, 17, 0, 90), zipf=1.2, redundant_per_rank=2),
    Case(
        "replicas_pipelined_bmm_fp32",
        tokens=(64, 17, 0, 90),
        zipf=1.2,
        redundant_per_rank=2,
        chunks=3,
        mode="bmm",
    ),
    Case(
        "replicas_pipelined_source_layout_fp32",
        tokens=(64, 17, 0, 90),
        zipf=1.2,
        redundant_per_rank=2,
        chunks=2,
        layout="source",
    ),
    Case(
        "replicas_bf16",
        tokens=(64, 17, 5, 90),
        zipf=1.0,
        redundant_per_rank=2,
        chunks=2,
        dtype="bfloat16",
    ),
    Case("bad_expert_id", bad_rank=0),
)

TOLERANCE = {"float32": (1e-5, 1e-5), "bfloat16": (3e-2, 3e-2)}


@dataclass
class Result:
    case: str
    rank: int
    ok: bool
    detail: str
    max_abs_err: float = 0.0
    tokens: int = 0
    received_rows: int = 0


def _zipf_popularity(num_experts: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** exponent
    return weights[torch.randperm(num_experts, generator=gen)]


def _topk(case: Case, num_tokens: int, pop: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Distinct experts per token, sampled without replacement from the popularity."""
    active = case.active_experts or case.num_experts
    probs = pop[:active].float().expand(num_tokens, active)
    if num_tokens == 0:
        return torch.empty(0, case.top_k, dtype=torch.int64)
    return torch.multinomial(probs, case.top_k, replacement=False, generator=gen)


def _placement(case: Case, world: int, pop: torch.Tensor) -> LayerPlacement:
    slots = case.num_experts // world + case.redundant_per_rank
    if case.redundant_per_rank == 0:
        return LayerPlacement.linear(case.num_experts, world)
    topo = Topology(
        num_layers=1, num_logical_experts=case.num_experts, num_ranks=world, slots_per_rank=slots
    )
    load = (pop / pop.sum() * 1000).numpy()[None, :]
    return rebalance(load, topo).layer(0)


def run_case(case: Case, rank: int, world: int, device: torch.device) -> Result:
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator().manual_seed(1234)  # shared: weights and popularity
    scale_in, scale_mid = case.hidden**-0.5, case.inter**-0.5
    w_gate_up = torch.randn(case.num_experts, case.hidden, 2 * case.inter, generator=gen)
    w_down = torch.randn(case.num_experts, case.inter, case.hidden, generator=gen)
    w_gate_up, w_down = w_gate_up * scale_in, w_down * scale_mid
    pop = (
        _zipf_popularity(case.num_experts, case.zipf, gen)
        if case.zipf > 0
        else torch.ones(case.num_experts, dtype=torch.float64)
    )
    layer = _placement(case, world, pop)
    mine = torch.Generator().manual_seed(1000 + rank)  # per rank: its tokens
    num_tokens = case.tokens[rank % len(case.tokens)]
    x = torch.randn(num_tokens, case.hidden, generator=mine)
    ids = _topk(case, num_tokens, pop, mine)
    weights = torch.rand(num_tokens, case.top_k, generator=mine)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
    if case.bad_rank == rank and num_tokens:
        ids[0, 0] = case.num_experts + 3

    x, w_gate_up, w_down = (t.to(dtype) for t in (x, w_gate_up, w_down))
    pool = ExpertPool.from_logical(
        w_gate_up.to(device), w_down.to(device), layer, rank, mode=case.mode
    )
    moe = EPMoE(
        pool, DevicePlacement.build(layer, device), num_chunks=case.chunks, layout=case.layout
    )
    try:
        out = moe(x.to(device), ids.to(device), weights.to(device)).cpu()
    except ValueError as exc:
        expected = case.bad_rank is not None and "topk_ids" in str(exc)
        return Result(case.name, rank, expected, f"ValueError: {exc}", tokens=num_tokens)
    if case.bad_rank is not None:
        return Result(case.name, rank, False, "no error for an out-of-range id", tokens=num_tokens)

    # Collectives first, so a local failure below cannot leave a peer waiting in one.
    received = torch.tensor([sum(moe.last_tokens_per_slot), num_tokens * case.top_k])
    dist.all_reduce(received)  # rows received everywhere == assignments sent everywhere
    ref = reference_moe(x.float(), ids, weights, w_gate_up.float(), w_down.float())
    err = float((out.float() - ref).abs().max()) if num_tokens else 0.0
    rtol, atol = TOLERANCE[case.dtype]
    # |out - ref| <= atol + rtol * |ref| elementwise (torch.testing's rule, without its imports).
    excess = (out.float() - ref).abs() - (atol + rtol * ref.abs())
    bad = int((excess > 0).sum())
    ok, detail = bad == 0, "ok" if bad == 0 else f"{bad} elements beyond rtol={rtol} atol={atol}"
    if int(received[0]) != int(received[1]):
        ok, detail = False, f"rows received {int(received[0])} != sent {int(received[1])}"
    return Result(case.name, rank, ok, detail, err, num_tokens, sum(moe.last_tokens_per_slot))


def _worker(
    rank: int, world: int, port: int, backend: str, device_kind: str, cases: list[Case], q: Any
) -> None:
    os.environ.update(NO_MULTICAST_ENV)
    torch.set_num_threads(1)
    device = torch.device(device_kind, rank) if device_kind == "cuda" else torch.device("cpu")
    if device_kind == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),  # a mismatched collective fails instead of hanging
    )
    try:
        for case in cases:
            try:
                res = run_case(case, rank, world, device)
            except Exception as exc:
                res = Result(case.name, rank, False, f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            q.put(asdict(res))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    world: int,
    *,
    backend: str = "gloo",
    device: str = "cpu",
    cases: tuple[Case, ...] = CASES,
    timeout_s: float = 300.0,
) -> list[Result]:
    """Spawn ``world`` ranks, run ``cases`` on each, return every rank's results.

    Raises ``RuntimeError`` when a rank exits non-zero or the ranks outlive ``timeout_s``.
    """
    os.environ.update(NO_MULTICAST_ENV)  # inherited by the spawned ranks
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, backend, device, list(cases), q))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        codes = [p.exitcode for p in procs]
        if any(c != 0 for c in codes):
            raise RuntimeError(f"ranks exited with {codes} (None: still running at the deadline)")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    out: list[Result] = []
    while not q.empty():
        out.append(Result(**q.get()))
    return sorted(out, key=lambda r: (r.case, r.rank))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ns = parser.parse_args(argv)
    backend = "nccl" if ns.device == "cuda" else "gloo"
    results = run(ns.nprocs, backend=backend, device=ns.device)
    for r in results:
        status = "PASS" if r.ok else "FAIL"
        print(
            f"{status} {r.case:32s} rank={r.rank} tokens={r.tokens:4d} "
            f"received={r.received_rows:4d} max_abs_err={r.max_abs_err:.2e} {r.detail}"
        )
    failed = [r for r in results if not r.ok]
    expected = len(CASES) * ns.nprocs
    if len(results) != expected:
        print(f"only {len(results)} of {expected} results came back", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
