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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmd.bench.workload import ChatTurn, WorkloadSpec, build_trace

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DES_ROUTERS = ("round-robin", "epp-default", "epp-precise", "vllm-router-cache (model)")

# 4 ASCII characters per token, so the approximate scorers' character blocks (16 tokens x 4
# characters) line up with the engines' token blocks.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _token_chars(t: int) -> str:
    a = _ALPHABET
    return a[(t >> 18) & 63] + a[(t >> 12) & 63] + a[(t >> 6) & 63] + a[t & 63]


# Token id -> its 4 characters, for ids up to 2**18 (every vocabulary the sims use): one
# lookup per token instead of four shifts and concatenations (the routing loop's hot path).
_TOKEN_CHARS = [_token_chars(t) for t in range(1 << 18)]


def token_text(ids: Sequence[int]) -> str:
    table = _TOKEN_CHARS
    n = len(table)
    return "".join(table[t] if 0 <= t < n else _token_chars(t) for t in ids)


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
        self.texts: dict[str, str] = {}

    def _text(self, request: Any) -> str:
        """The prompt as text (4 characters per token); shared across the runs of one size."""
        text = self.texts.get(request.request_id)
        if text is None:
            text = self.texts[request.request_id] = token_text(request.prompt_token_ids)
        return text

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
            prompt=self._text(request),
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


# A special token of the chat template (`<|im_start|>`, `<|eot_id|>`, ...).
_SPECIAL = re.compile(r"(<\|[^<>|\s]+\|>)")


class ChatEncoder:
    """Token ids of chat prompts, encoded piece by piece with a cache.

    The rendered template is cut at its special tokens, which the tokenizer never merges
    with their neighbours, so encoding the pieces and joining them gives the ids of the
    whole text (a test checks it). Every turn repeats its group's system prompt and its own
    history, so the cache turns tokenizing N prompts of several thousand tokens into
    tokenizing each distinct message once.
    """

    def __init__(self) -> None:
        from llmd_sdk.tokenizer import load_tokenizer

        self.tok = load_tokenizer(None)
        self.pieces: dict[str, list[int]] = {}

    def _piece(self, text: str) -> list[int]:
        ids = self.pieces.get(text)
        if ids is None:
            ids = self.pieces[text] = self.tok.encode(text, add_special_tokens=False)
        return ids

    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self.tok.apply_chat_template(messages)
        out: list[int] = []
        for piece in _SPECIAL.split(text):
            if piece:
                out.extend(self._piece(piece))
        return out

    def shared_prefix_len(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the rendered first (system) message: what every turn of a group shares."""
        first = self.encode(messages[:1])
        whole = self.encode(messages)
        n = 0
        for a, b in zip(first, whole, strict=False):
            if a != b:
                break
            n += 1
        return n


def _trace(
    turns: Sequence[ChatTurn], output_len: int, enc: ChatEncoder, ids: dict[str, list[int]]
) -> list[Any]:
    """The trace as the cluster simulator takes it. `ids` caches each turn's token ids by
    request id (content does not depend on the rate); `prefix_key`/`prefix_len` name the
    group's system prompt so its block hashes are computed once per run."""
    from llmd_sim.trace import TraceRequest

    out = []
    for t in turns:
        p = ids.get(t.request_id)
        if p is None:
            p = ids[t.request_id] = enc.encode(t.messages)
        shared = ids.get(f"group/{t.group}")
        if shared is None:
            shared = ids[f"group/{t.group}"] = [enc.shared_prefix_len(t.messages)]
        out.append(
            TraceRequest(
                request_id=t.request_id,
                arrival=t.arrival_s,
                prompt_token_ids=list(p),
                output_len=output_len,
                prefix_key=f"group/{t.group}",
                prefix_len=shared[0],
            )
        )
    return out


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
    enc = ChatEncoder()
    for n in opts.engines:
        spec = opts.base.scaled(n / opts.base_engines)
        ids: dict[str, list[int]] = {}
        texts: dict[str, str] = {}
        for per_engine in opts.rates_per_engine:
            rate = per_engine * n
            turns = build_trace(spec, rate)
            first, last = min(t.arrival_s for t in turns), max(t.arrival_s for t in turns)
            for name in routers:
                trace = _trace(turns, spec.output_tokens, enc, ids)
                router = make_router(name, n)
                if isinstance(router, EppRouter):
                    router.texts = texts
                sim = ClusterSimulator(n, config, LatencyModel(profile), router)
                result = sim.run(trace)
                s = result.summary()
                spread = result.per_engine_requests
                row: dict[str, Any] = {
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
                    "sim_time_s": s["sim_time_s"],
                    "arrival_span_s": last - first,
                    # From the last arrival to the last completion (virtual time); reported,
                    # not a keep-up test (`stats.completes` says why).
                    "drain_s": s["sim_time_s"] - last,
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
