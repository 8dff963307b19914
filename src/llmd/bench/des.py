"""The same routing policies in vllm-sim's discrete-event mode, at cluster sizes no laptop runs.

`llmd_sim.cluster.ClusterSimulator` runs N engine cores (vLLM's scheduler and prefix cache, the
calibrated latency model) in virtual time behind a `Router`. Adapted here:

- `EppRouter`: our EPP's scheduling core (`llmd_epp.scheduling`, loaded from the same
  EndpointPickerConfig YAML as the service) picking among endpoints whose metrics are the
  engines' state at the arrival. With precise prefix scoring, its prefix source answers from the
  engines' actual GPU prefix caches, which is what kvmanager's index holds once the KV events
  have arrived (event delay is not modelled).
- `CacheAwareModel`: a re-implementation of the cache-aware policy vllm-router documents
  (`--policy cache_aware`: balance on load when imbalanced beyond `--balance-abs-threshold` and
  `--balance-rel-threshold`, else the longest approximate-prefix match above
  `--cache-threshold`, else the worker with the least cached text). It is a model of the
  policy from its documented parameters, not vllm-router's code.
- round-robin: `llmd_sim.routers.RoundRobinRouter`.

vllm-router's `kv_aware` policy is not modelled (its cost function is not documented).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmd.bench.workload import ChatTurn, WorkloadSpec, build_trace

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DES_ROUTERS = ("round-robin", "epp-default", "epp-precise", "vllm-router-cache (model)")

# 4 ASCII characters per token, so the approximate scorers' character blocks (16 tokens x 4
# characters) line up with the engines' token blocks.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def token_text(ids: Sequence[int]) -> str:
    a = _ALPHABET
    return "".join(
        a[(t >> 18) & 63] + a[(t >> 12) & 63] + a[(t >> 6) & 63] + a[t & 63] for t in ids
    )


class EppRouter:
    """`llmd_epp.scheduling` behind the cluster simulator's `Router` protocol."""

    def __init__(self, config_yaml: str, num_engines: int, *, precise: bool, seed: int = 1):
        from llmd_epp.pickerconfig import load_picker_config
        from llmd_epp.scheduling import Endpoint

        deps: dict[str, Any] = {"prefix_score_source": self} if precise else {}
        self.picker = load_picker_config(config_yaml, seed=seed, deps=deps)
        self.scheduler = self.picker.scheduler
        self.endpoints = [
            Endpoint.at(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:8000")
            for i in range(num_engines)
        ]
        self.index = {e.key: i for i, e in enumerate(self.endpoints)}
        self._views: Sequence[Any] = ()
        self._hashes: Sequence[Any] = ()

    # PrefixScoreSource, synchronous: what kvmanager would answer.
    def score(self, request: Any, endpoints: Sequence[str]) -> Any:
        from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrefixScores

        matched = {
            key: self._views[self.index[key]].cached_prefix_blocks(self._hashes)
            for key in endpoints
        }
        return PrefixScores(
            matched=matched,
            weighted={k: float(v) for k, v in matched.items()},
            total_blocks=len(self._hashes),
            block_size=16,
        )

    def route(self, request: Any, engines: Sequence[Any]) -> int:
        from llmd_epp.scheduling import LLMRequest

        self._views = engines
        self._hashes = request.block_hashes or ()
        now = request.arrival
        for ep, view in zip(self.endpoints, engines, strict=True):
            m = ep.metrics
            m.waiting = view.num_waiting
            m.running = view.num_running
            m.kv_usage = view.kv_usage
            m.block_size = view.block_size
            m.updated_at = now
        req = LLMRequest(
            request_id=request.request_id,
            model=MODEL,
            target_model=MODEL,
            prompt=token_text(request.prompt_token_ids),
            token_ids=request.prompt_token_ids,
        )
        result = self.scheduler.schedule(req, self.endpoints, now)
        self.scheduler.pre_request(req, result, now)
        return self.index[result.primary.key]


class CacheAwareModel:
    """vllm-router's documented cache_aware policy over block-granular prefix trees."""

    def __init__(
        self,
        num_engines: int,
        *,
        cache_threshold: float = 0.3,
        balance_abs: int = 64,
        balance_rel: float = 1.5,
        max_blocks_per_worker: int = 33554432 // 64,
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.max_blocks = max_blocks_per_worker
        # Per worker: block hash -> last use (an LRU of the prefixes routed to it).
        self.trees: list[dict[Any, int]] = [{} for _ in range(num_engines)]
        self.clock = 0

    def route(self, request: Any, engines: Sequence[Any]) -> int:
        hashes = request.block_hashes or []
        loads = [e.num_waiting + e.num_running for e in engines]
        lo, hi = min(loads), max(loads)
        self.clock += 1
        if hi - lo > self.balance_abs and hi > lo * self.balance_rel:
            pick = loads.index(lo)
        else:
            best, best_len = 0, -1
            for i, tree in enumerate(self.trees):
                n = 0
                for h in hashes:
                    if h not in tree:
                        break
                    n += 1
                if n > best_len:
                    best, best_len = i, n
            rate = best_len / len(hashes) if hashes else 0.0
            if rate > self.cache_threshold:
                pick = best
            else:
                pick = min(range(len(self.trees)), key=lambda i: (len(self.trees[i]), loads[i]))
        tree = self.trees[pick]
        for h in hashes:
            tree[h] = self.clock
        if len(tree) > self.max_blocks:
            for h, _ in sorted(tree.items(), key=lambda kv: kv[1])[: len(tree) - self.max_blocks]:
                del tree[h]
        return pick


@dataclass(slots=True)
class DesOptions:
    engines: Sequence[int] = (64, 256)
    rates_per_engine: Sequence[float] = (1.0, 2.0, 3.0)
    base: WorkloadSpec = field(default_factory=WorkloadSpec)
    base_engines: int = 4
    num_gpu_blocks: int | None = None
    latency_profile: str | None = None
    max_num_seqs: int = 128


def des_available() -> str | None:
    """None when the discrete-event mode can run here, else why not."""
    try:
        import llmd_epp.pickerconfig  # noqa: F401
        import llmd_sdk.tokenizer  # noqa: F401
        import llmd_sim.cluster  # noqa: F401
    except ImportError as exc:
        return f"needs {exc.name} (not in this workspace)"
    return None


def _trace(turns: Sequence[ChatTurn], output_len: int) -> list[Any]:
    from llmd_sdk.tokenizer import load_tokenizer
    from llmd_sim.trace import TraceRequest

    tok = load_tokenizer(None)
    texts = [tok.apply_chat_template(t.messages) for t in turns]
    ids = tok.encode_batch(texts, add_special_tokens=False)
    return [
        TraceRequest(
            request_id=t.request_id, arrival=t.arrival_s, prompt_token_ids=p, output_len=output_len
        )
        for t, p in zip(turns, ids, strict=True)
    ]


def make_router(name: str, num_engines: int) -> Any:
    import yaml
    from llmd_sim.routers import RoundRobinRouter

    from llmd.bench.live import PRECISE_EPP, UPSTREAM_DEFAULT_EPP

    if name == "round-robin":
        return RoundRobinRouter()
    if name == "epp-default":
        return EppRouter(yaml.safe_dump(UPSTREAM_DEFAULT_EPP), num_engines, precise=False)
    if name == "epp-precise":
        return EppRouter(yaml.safe_dump(PRECISE_EPP), num_engines, precise=True)
    if name == "vllm-router-cache (model)":
        return CacheAwareModel(num_engines)
    raise ValueError(f"unknown DES router {name!r}")


def run_des(
    opts: DesOptions, routers: Sequence[str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Every (engines, rate, router) cell; one row per cell (sim-time metrics)."""
    from llmd_sim.cluster import ClusterSimulator
    from llmd_sim.engine import EngineConfig
    from llmd_sim.latency import LatencyModel, load_profile

    profile = load_profile(opts.latency_profile)
    blocks = opts.num_gpu_blocks or getattr(profile, "num_gpu_blocks", None) or 8192
    config = EngineConfig(max_num_seqs=opts.max_num_seqs, num_gpu_blocks=blocks)
    rows: list[dict[str, Any]] = []
    for n in opts.engines:
        spec = opts.base.scaled(n / opts.base_engines)
        for per_engine in opts.rates_per_engine:
            rate = per_engine * n
            turns = build_trace(spec, rate)
            for name in routers:
                trace = _trace(turns, spec.output_tokens)
                sim = ClusterSimulator(n, config, LatencyModel(profile), make_router(name, n))
                result = sim.run(trace)
                s = result.summary()
                spread = result.per_engine_requests
                row = {
                    "engines": n,
                    "router": name,
                    "rate_rps": rate,
                    "requests": s["requests"],
                    "ttft_p50_s": s["ttft_p50_s"],
                    "ttft_p90_s": s["ttft_p90_s"],
                    "ttft_p99_s": s["ttft_p99_s"],
                    "tpot_mean_s": s["tpot_mean_s"],
                    "e2e_p50_s": s["e2e_p50_s"],
                    "e2e_p99_s": s["e2e_p99_s"],
                    "output_tokens_per_s": s["output_tokens_per_s"],
                    "prefix_hit_rate": s["prefix_hit_rate"],
                    "preemptions": s["preemptions"],
                    "busiest_engine_share": max(spread) / max(1, sum(spread)),
                    "cpu_s": s["cpu_time_s"],
                }
                rows.append(row)
                log(
                    f"  des {n} engines {name} @ {rate:g} req/s: p90 TTFT "
                    f"{row['ttft_p90_s'] * 1e3:.0f} ms, hit {row['prefix_hit_rate']:.2f} "
                    f"({row['cpu_s']:.1f}s cpu)"
                )
    return rows


def nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
