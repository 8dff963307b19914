"""MoE dispatch+combine bandwidth against NCCL's own all-to-all of the same bytes.

Each rank holds T tokens of DeepSeek-V3 shape (H=7168, bf16) routed uniformly to top-8 of 256
experts spread over the ranks. Per token count and pipeline depth (``--chunks``) it times

* ``ours``: ``dispatch`` + ``combine`` from ``llmd_expert_router.dataplane`` (routing, the split
  exchange and its host sync, gathers, variable-split ``all_to_all_single`` both ways, scatters,
  the weighted reduction), with identity experts in between;
* ``raw``: ``all_to_all_single`` there and back with the very same split sizes on preallocated
  buffers (the bytes ``ours`` moves, with nothing else),

and reports the bytes each rank sends, both bandwidths and ``ratio = raw time / ours time``
(the fraction of the raw all-to-all bandwidth that dispatch+combine achieves). Times are the
median over iterations of the slowest rank.

GPU (one process per GPU, spawned here; NCCL):
    python benchmarks/moe_dispatch.py --nprocs 2 --out benchmarks/data/moe_dispatch_h200x2.json
CPU smoke (gloo, tiny shapes, a few seconds):
    python benchmarks/moe_dispatch.py --device cpu --smoke
Under torchrun (``torchrun --nproc-per-node 2 benchmarks/moe_dispatch.py ...``) it uses the
launcher's ranks instead of spawning.

NVLink multicast stays off: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are forced into this process's environment before torch is imported,
and so into every process it starts.
"""

from __future__ import annotations

import os

NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
os.environ.update(NO_MULTICAST_ENV)  # before torch (and NCCL) load; inherited by children

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from llmd_expert_router.balancer import rebalance  # noqa: E402
from llmd_expert_router.dataplane import DevicePlacement, Layout, combine, dispatch  # noqa: E402
from llmd_expert_router.placement import LayerPlacement, Topology  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--nprocs", type=int, default=2, help="ranks to spawn (ignored under torchrun)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tokens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--redundant", type=int, default=0, help="replica slots (balancer placement)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--layouts",
        nargs="+",
        choices=("expert", "source"),
        default=["expert", "source"],
        help="receive layouts: grouped by expert (complete) or as received (experts gather)",
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few iterations")
    p.add_argument("--out", type=Path, help="write the results as JSON here (rank 0)")
    ns = p.parse_args(argv)
    if ns.smoke:
        ns.tokens, ns.hidden, ns.experts, ns.top_k = [16, 64], 256, 16, 4
        ns.chunks, ns.warmup, ns.iters = [1, 2], 1, 2
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    return ns


class Timer:
    """Wall time of a region on this rank: CUDA events on GPUs, perf_counter on CPUs."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def marks(self, n: int) -> list[Any]:
        if self.cuda:
            return [torch.cuda.Event(enable_timing=True) for _ in range(n)]  # type: ignore[no-untyped-call]
        return [0.0] * n

    def mark(self, marks: list[Any], i: int) -> None:
        if self.cuda:
            marks[i].record()
        else:
            marks[i] = time.perf_counter()

    def seconds(self, marks: list[Any], a: int, b: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return float(marks[a].elapsed_time(marks[b])) / 1e3
        return float(marks[b] - marks[a])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()


def slowest(values: list[float], device: torch.device) -> float:
    """Median over iterations on this rank, then the maximum over ranks."""
    t = torch.tensor([statistics.median(values)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def total(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def build_placement(ns: argparse.Namespace, world: int, device: torch.device) -> DevicePlacement:
    if ns.redundant == 0:
        return DevicePlacement.build(LayerPlacement.linear(ns.experts, world), device)
    topo = Topology.with_redundant(
        num_layers=1, num_logical_experts=ns.experts, num_ranks=world, num_redundant=ns.redundant
    )
    gen = torch.Generator().manual_seed(ns.seed)
    load = torch.rand(1, ns.experts, generator=gen).numpy() + 1.0
    return DevicePlacement.build(rebalance(load, topo).layer(0), device)


def bench_case(
    ns: argparse.Namespace,
    tokens: int,
    chunks: int,
    layout: Layout,
    placement: DevicePlacement,
    device: torch.device,
) -> dict[str, Any]:
    dtype = DTYPES[ns.dtype]
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator(device=device).manual_seed(ns.seed * 7919 + rank * 104729 + tokens)
    hidden = torch.randn(tokens, ns.hidden, generator=gen, device=device, dtype=dtype)
    scores = torch.rand(tokens, ns.experts, generator=gen, device=device)
    topk_w, topk_ids = scores.topk(ns.top_k, dim=1)
    topk_w = torch.softmax(topk_w, dim=1)
    timer = Timer(device)

    def ours() -> tuple[float, float, float, Any]:
        m = timer.marks(3)
        timer.mark(m, 0)
        routed = dispatch(hidden, topk_ids, topk_w, placement, num_chunks=chunks, layout=layout)
        timer.mark(m, 1)
        combine(routed.expert_x, routed.handle)
        timer.mark(m, 2)
        return timer.seconds(m, 0, 1), timer.seconds(m, 1, 2), timer.seconds(m, 0, 2), routed

    *_, routed = ours()
    h = routed.handle
    send_splits = [sum(col) for col in zip(*h.send_splits, strict=True)]
    recv_splits = [sum(col) for col in zip(*h.recv_splits, strict=True)]
    n_send, n_recv = sum(send_splits), sum(recv_splits)
    send_buf = torch.randn(n_send, ns.hidden, generator=gen, device=device, dtype=dtype)
    recv_buf = torch.empty(n_recv, ns.hidden, device=device, dtype=dtype)
    back_buf = torch.empty(n_send, ns.hidden, device=device, dtype=dtype)
    del routed, h

    def raw() -> float:
        m = timer.marks(2)
        timer.mark(m, 0)
        dist.all_to_all_single(recv_buf, send_buf, recv_splits, send_splits)
        dist.all_to_all_single(back_buf, recv_buf, send_splits, recv_splits)
        timer.mark(m, 1)
        return timer.seconds(m, 0, 1)

    def repeat(fn: Callable[[], Any]) -> list[Any]:
        for _ in range(ns.warmup):
            sync(device)
            fn()
        out = []
        for _ in range(ns.iters):
            sync(device)
            out.append(fn())
        return out

    # Interleave the two measurements so drift (clocks, neighbours) hits both alike.
    ours_runs: list[tuple[float, float, float, Any]] = []
    raw_runs: list[float] = []
    for _ in range(2):
        ours_runs += [r[:3] for r in repeat(ours)]
        raw_runs += repeat(raw)
    elem = torch.empty((), dtype=dtype).element_size()
    local_rows = send_splits[rank]  # rows this rank sends to itself (no link crossed)
    bytes_sent = (n_send + n_recv) * ns.hidden * elem  # dispatch out + combine out
    remote_bytes = (n_send + n_recv - 2 * local_rows) * ns.hidden * elem
    t_dispatch = slowest([r[0] for r in ours_runs], device)
    t_combine = slowest([r[1] for r in ours_runs], device)
    t_ours = slowest([r[2] for r in ours_runs], device)
    t_raw = slowest(raw_runs, device)
    mean_bytes = total(bytes_sent, device) / world
    mean_remote = total(remote_bytes, device) / world
    return {
        "tokens_per_rank": tokens,
        "chunks": chunks,
        "layout": layout,
        "dispatch_s": t_dispatch,
        "combine_s": t_combine,
        "ours_s": t_ours,
        "raw_s": t_raw,
        "bytes_per_rank": mean_bytes,
        "remote_bytes_per_rank": mean_remote,
        "ours_gbps": mean_bytes / t_ours / 1e9,
        "raw_gbps": mean_bytes / t_raw / 1e9,
        "ours_remote_gbps": mean_remote / t_ours / 1e9,
        "raw_remote_gbps": mean_remote / t_raw / 1e9,
        "ratio": t_raw / t_ours,
    }


def machine(device: torch.device, world: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "world_size": world,
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
        "env": {k: os.environ.get(k) for k in NO_MULTICAST_ENV},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count_visible=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            nccl=".".join(str(v) for v in torch.cuda.nccl.version()),  # type: ignore[no-untyped-call]
        )
    return info


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'tokens':>6s} {'layout':>6s} {'chunks':>6s} {'MB/rank':>8s} {'dispatch':>9s} "
        f"{'combine':>9s} {'ours':>9s} {'raw a2a':>9s} {'ours GB/s':>9s} {'raw GB/s':>9s} "
        f"{'ratio':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['tokens_per_rank']:6d} {r['layout']:>6s} {r['chunks']:6d} "
            f"{r['bytes_per_rank'] / 1e6:8.1f} "
            f"{r['dispatch_s'] * 1e3:7.3f}ms {r['combine_s'] * 1e3:7.3f}ms "
            f"{r['ours_s'] * 1e3:7.3f}ms {r['raw_s'] * 1e3:7.3f}ms "
            f"{r['ours_gbps']:9.1f} {r['raw_gbps']:9.1f} {r['ratio']:6.2f}"
        )
    return "\n".join(lines)


def worker(rank: int, world: int, init: str, ns: argparse.Namespace) -> None:
    os.environ.update(NO_MULTICAST_ENV)
    if ns.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        torch.set_num_threads(1)
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(
        backend, init_method=init, rank=rank, world_size=world, timeout=timedelta(minutes=5)
    )
    try:
        placement = build_placement(ns, world, device)
        rows = []
        for tokens in ns.tokens:
            for layout in ns.layouts:
                for chunks in ns.chunks:
                    rows.append(bench_case(ns, tokens, chunks, layout, placement, device))
        if rank == 0:
            print(table(rows), flush=True)
            print(
                "\nratio = raw all_to_all_single time / dispatch+combine time, same split sizes",
                flush=True,
            )
            for layout in ns.layouts:
                best: dict[int, dict[str, Any]] = {}
                for r in rows:
                    t = r["tokens_per_rank"]
                    if r["layout"] == layout and (t not in best or r["ratio"] > best[t]["ratio"]):
                        best[t] = r
                print(
                    f"best chunks, {layout} layout: "
                    + ", ".join(f"{t}: {b['chunks']} ({b['ratio']:.2f})" for t, b in best.items()),
                    flush=True,
                )
            if ns.out:
                ns.out.parent.mkdir(parents=True, exist_ok=True)
                result = {
                    "benchmark": "moe_dispatch",
                    "command": "python benchmarks/moe_dispatch.py " + " ".join(ns.argv),
                    "shape": {
                        "hidden": ns.hidden,
                        "experts": ns.experts,
                        "top_k": ns.top_k,
                        "redundant": ns.redundant,
                        "dtype": ns.dtype,
                        "routing": "uniform random top-k",
                    },
                    "iterations": {"warmup": ns.warmup, "timed": 2 * ns.iters},
                    "machine": machine(device, world),
                    "results": rows,
                }
                ns.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("moe_dispatch: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", ns)
        return 0
    if ns.device == "cuda" and ns.nprocs > torch.cuda.device_count():
        print(
            f"moe_dispatch: --nprocs {ns.nprocs} but {torch.cuda.device_count()} GPUs",
            file=sys.stderr,
        )
        return 2
    init = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, ns.nprocs, init, ns)) for r in range(ns.nprocs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes = [p.exitcode for p in procs]
    if any(codes):
        print(f"moe_dispatch: ranks exited with {codes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
