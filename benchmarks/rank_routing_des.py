"""Rank routing inside one DP=8 wide-EP group, in vllm-sim's discrete-event simulator.

`llmd_sim.dp_group.DPGroupSimulator` runs 8 engine cores (vLLM's scheduler and prefix cache, the
calibrated H100 latency model) that step in lockstep: each group step lasts as long as the
slowest rank's batch. A router picks the rank of every request (the `x-data-parallel-rank`
header). Compared on the same trace, in the same run:

- `least-load`: fewest tokens in flight (prompt + decode, charged at routing, released at
  finish), blind to prefix caches. The baseline every ratio is taken against.
- `vllm-dp-lb`: vLLM's own DP balancing score, lowest waiting * 4 + running.
- `prefix-only`: the rank caching most of the prompt, then the fewest tokens in flight.
- `sdk-balancer-q0`: `llmd_sdk.dp_rank.RankBalancer` (bottleneck + affinity cost, affinity
  weight 1, no queue term) with each rank's GPU prefix hit of the prompt.
- `sdk-balancer`: the same with `queue_weight=0.5` (the EPP plugin's default).
- `epp-dp-rank-balancer`: the EPP's `dp-rank-balancer` plugin, loaded from EndpointPickerConfig
  YAML and driven through `llmd_epp.scheduling` (schedule, pre_request, response_complete), its
  per-rank prefix hits from the engines' caches (what kvmanager would report). The rank is read
  back from the `x-data-parallel-rank` header it sets.
- `epp-dp-rank-balancer-approx`: the same plugin with no prefix source: its own index of the
  prompts it routed to each rank (blind to evictions), as it runs without kvmanager.

Workload: `llmd.bench.workload` (shared system prompts per user group, multi-turn chats whose
history grows, Poisson conversation starts), tokenized with the SDK's built-in tokenizer: 16
groups of 16 users, 4 turns, ~5.4k-token system prompts (prompts of 5.4k-7.2k tokens), 128
output tokens. The nominal rate is the peak arrival rate; turns are spaced by think times, so
the trace's mean rate (`arrival_rate_mean`) is lower. Each rate runs with a small KV cache per
rank (4096 blocks = 64k tokens: less than the 16 system prompts, as for big MoE models) and a
large one (16384 blocks: everything fits); a third case has 2 hot system prompts (fewer
prefixes than ranks, 128 users each), where affinity alone piles the traffic on two ranks.

    uv run --no-sync python benchmarks/rank_routing_des.py --out benchmarks/data/rank_routing_des.json
    uv run --no-sync python benchmarks/rank_routing_des.py --smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from llmd.bench.workload import WorkloadSpec, build_trace

EPP_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: dp-rank-balancer
  parameters: {{dataParallelSize: {ranks}, expectedDecodeTokens: {decode}, affinityWeight: 1}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: dp-rank-balancer, weight: 1}}
  - {{pluginRef: max-score-picker}}
"""
ROUTERS = (
    "least-load",
    "vllm-dp-lb",
    "prefix-only",
    "sdk-balancer-q0",
    "sdk-balancer",
    "epp-dp-rank-balancer",
    "epp-dp-rank-balancer-approx",
)


MANY = WorkloadSpec(
    seed=0, groups=16, users_per_group=16, turns=4, system_words=1500, output_tokens=128
)
HOT = replace(MANY, groups=2, users_per_group=128)


@dataclass(frozen=True, slots=True)
class Case:
    """A workload and the KV cache each rank has for it."""

    name: str
    workload: WorkloadSpec
    kv_blocks: int  # per rank, 16 tokens a block


CASES = (
    Case("16-prefixes/64k-kv", MANY, 4096),  # the 16 system prompts do not fit one rank
    Case("16-prefixes/256k-kv", MANY, 16384),  # everything fits every rank
    Case("2-hot-prefixes", HOT, 4096),  # fewer prefixes than ranks: affinity alone piles up
)


@dataclass(slots=True)
class Options:
    ranks: int = 8
    rates: Sequence[float] = (4.0, 8.0, 16.0, 32.0, 48.0)  # peak requests/s into the group
    cases: Sequence[Case] = CASES
    max_num_seqs: int = 128
    routers: Sequence[str] = ROUTERS


class EppRankRouter:
    """The EPP's scheduling core with `dp-rank-balancer`, one endpoint standing for the group.

    `precise`: per-rank prefix hits from the engines' caches (the `dp_rank_prefix_source`
    dependency); otherwise the plugin's own index of what it routed where, over the prompt text
    (4 characters per token, so its 16-token blocks line up with the engines').
    """

    def __init__(self, ranks: int, decode_tokens: int, *, precise: bool = True) -> None:
        from llmd_epp.pickerconfig import load_picker_config
        from llmd_epp.scheduling import DP_RANK_HEADER, Endpoint

        self.precise = precise
        cfg = load_picker_config(
            EPP_CONFIG.format(ranks=ranks, decode=decode_tokens),
            seed=1,
            deps={"dp_rank_prefix_source": self} if precise else {},
        )
        self.scheduler = cfg.scheduler
        self.header = DP_RANK_HEADER
        self.group = [Endpoint.at("10.0.0.1:8000")]
        self._views: Sequence[Any] = ()
        self._hashes: Sequence[Any] = ()
        self._open: dict[str, Any] = {}

    # RankPrefixSource: what kvmanager's index would answer per rank (event delay not modelled).
    def cached_tokens(self, request: Any, endpoint: Any, ranks: Sequence[int]) -> Mapping[int, int]:
        return {
            r: self._views[r].cached_prefix_blocks(self._hashes) * self._views[r].block_size
            for r in ranks
        }

    def route(self, request: Any, ranks: Sequence[Any]) -> int:
        from llmd_epp.scheduling import LLMRequest

        self._views, self._hashes = ranks, request.block_hashes or ()
        from llmd.bench.des import token_text

        ids = request.prompt_token_ids
        text = "" if self.precise else token_text(ids)
        req = LLMRequest(request_id=request.request_id, model="m", prompt=text, token_ids=ids)
        result = self.scheduler.schedule(req, self.group, request.arrival)
        self.scheduler.pre_request(req, result, request.arrival)
        self._open[request.request_id] = req
        return int(result.headers[self.header])

    def finished(self, request_id: str, rank: int, now: float) -> None:
        req = self._open.pop(request_id)
        self.scheduler.response_complete(req, self.group[0].key, now, None)


def make_router(name: str, ranks: int, decode_tokens: int) -> Any:
    from llmd_sim.dp_group import (
        BalancedRankRouter,
        LeastRequestsRankRouter,
        LeastTokensRankRouter,
        PrefixFirstRankRouter,
    )

    if name == "least-load":
        return LeastTokensRankRouter(ranks)
    if name == "vllm-dp-lb":
        return LeastRequestsRankRouter()
    if name == "prefix-only":
        return PrefixFirstRankRouter(ranks)
    if name == "sdk-balancer-q0":
        return BalancedRankRouter(ranks, affinity_weight=1.0, queue_weight=0.0)
    if name == "sdk-balancer":
        return BalancedRankRouter(ranks, affinity_weight=1.0, queue_weight=0.5)
    if name == "epp-dp-rank-balancer":
        return EppRankRouter(ranks, decode_tokens)
    if name == "epp-dp-rank-balancer-approx":
        return EppRankRouter(ranks, decode_tokens, precise=False)
    raise ValueError(f"router: unknown {name!r}; known: {', '.join(ROUTERS)}")


def make_trace(spec: WorkloadSpec, rate: float) -> list[Any]:
    from llmd_sdk.tokenizer import load_tokenizer
    from llmd_sim.trace import TraceRequest

    turns = build_trace(spec, rate)
    tok = load_tokenizer(None)
    ids = tok.encode_batch(
        [tok.apply_chat_template(t.messages) for t in turns], add_special_tokens=False
    )
    return [
        TraceRequest(t.request_id, t.arrival_s, list(p), spec.output_tokens)
        for t, p in zip(turns, ids, strict=True)
    ]


def run(opts: Options, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per (case, rate, router); ratios against least-load in the same cell."""
    from llmd_sim.dp_group import DPGroupSimulator
    from llmd_sim.engine import EngineConfig
    from llmd_sim.latency import LatencyModel, load_profile

    profile = load_profile(None)
    rows: list[dict[str, Any]] = []
    traces: dict[tuple[WorkloadSpec, float], list[Any]] = {}
    for case, rate in ((c, r) for c in opts.cases for r in opts.rates):
        blocks = case.kv_blocks
        config = EngineConfig(max_num_seqs=opts.max_num_seqs, num_gpu_blocks=blocks)
        key = (case.workload, rate)
        if key not in traces:
            traces[key] = make_trace(case.workload, rate)
        trace = traces[key]
        prompts = [t.num_prompt_tokens for t in trace]
        cell: list[dict[str, Any]] = []
        for name in opts.routers:
            router = make_router(name, opts.ranks, case.workload.output_tokens)
            sim = DPGroupSimulator(opts.ranks, config, LatencyModel(profile), router)
            result = sim.run(replace(t, block_hashes=None) for t in trace)
            s = result.summary()
            spread = result.per_engine_requests
            e2e = sorted(r.e2e for r in result.records)
            cell.append({
                "case": case.name,
                "kv_blocks_per_rank": blocks,
                "rate_rps": rate,
                "arrival_rate_mean": len(trace) / trace[-1].arrival,
                "prompt_tokens_mean": sum(prompts) / len(prompts),
                "router": name,
                "requests": s["requests"],
                "ttft_p50_s": s["ttft_p50_s"],
                "ttft_p90_s": s["ttft_p90_s"],
                "e2e_mean_s": sum(e2e) / len(e2e),
                "e2e_p50_s": s["e2e_p50_s"],
                "e2e_p90_s": e2e[min(len(e2e) - 1, int(0.9 * len(e2e)))],
                "sim_time_s": s["sim_time_s"],
                "throughput_req_s": s["throughput_req_s"],
                "output_tokens_per_s": s["output_tokens_per_s"],
                "prefix_hit_rate": s["prefix_hit_rate"],
                "lockstep_overhead": sim.lockstep_overhead,
                "group_steps": sim.group_steps,
                "busiest_rank_share": max(spread) / max(1, sum(spread)),
                "preemptions": s["preemptions"],
                "cpu_s": s["cpu_time_s"],
            })  # fmt: skip
        base = next((c for c in cell if c["router"] == "least-load"), cell[0])
        for c in cell:
            for key in ("ttft_p50_s", "ttft_p90_s", "e2e_mean_s", "throughput_req_s"):
                c[f"{key}_vs_least_load"] = c[key] / base[key] if base[key] else None
            log(
                f"{case.name:19s} {rate:5.0f} {c['router']:27s} {c['ttft_p50_s'] * 1e3:9.0f} "
                f"{c['ttft_p90_s'] * 1e3:9.0f} {c['e2e_mean_s']:8.2f} {c['e2e_p90_s']:8.2f} "
                f"{c['throughput_req_s']:7.2f} {c['prefix_hit_rate']:6.2f} "
                f"{c['lockstep_overhead']:6.2f} {c['ttft_p90_s_vs_least_load']:9.2f}x "
                f"{c['e2e_mean_s_vs_least_load']:8.2f}x"
            )
        rows.extend(cell)
    return rows


HEADER = (
    f"{'case':19s} {'req/s':>5s} {'router':27s} {'ttft_p50':>9s} {'ttft_p90':>9s} {'e2e_mean':>8s} "
    f"{'e2e_p90':>8s} {'done/s':>7s} {'hit':>6s} {'lockst':>6s} {'p90 vs LL':>10s} {'e2e vs LL':>9s}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (CI)")
    parser.add_argument("--rates", type=float, nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, help="KV blocks per rank (all cases)")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES])
    ns = parser.parse_args(argv)
    opts = Options()
    cases = [c for c in CASES if not ns.cases or c.name in ns.cases]
    if ns.smoke:
        opts.rates = [16.0]
        tiny = replace(MANY, groups=4, users_per_group=2, turns=2, system_words=400)
        cases = [Case("smoke", tiny, 4096)]
    if ns.rates:
        opts.rates = ns.rates
    opts.cases = [
        Case(c.name, replace(c.workload, seed=ns.seed), ns.blocks or c.kv_blocks) for c in cases
    ]
    sizes = ", ".join(f"{c.name}: {c.workload.requests}" for c in opts.cases)
    print(
        f"DP={opts.ranks} lockstep group, seed {ns.seed}, requests per rate ({sizes}); "
        "TTFT in ms, e2e in s of simulated time"
    )
    print(HEADER + "\n" + "-" * len(HEADER))
    rows = run(opts)
    print(
        "\ndone/s = completed requests / simulated time (arrival-bound below saturation); hit = "
        "prefix-cache hit rate (cached / prompt tokens); lockst = busiest rank's step "
        "time / mean rank's, summed over group steps; vs LL = ratio to least-load in this run "
        "(lower is better)."
    )
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps({
            "benchmark": "rank_routing_des",
            "command": " ".join(["python", "benchmarks/rank_routing_des.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "seed": ns.seed,
            "ranks": opts.ranks,
            "max_num_seqs": opts.max_num_seqs,
            "latency_profile": "h100-llama-3.1-8b (packaged default)",
            "cases": [{"name": c.name, "kv_blocks_per_rank": c.kv_blocks,
                       "workload": asdict(c.workload)} for c in opts.cases],
            "machine": platform.platform(),
            "results": rows,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
