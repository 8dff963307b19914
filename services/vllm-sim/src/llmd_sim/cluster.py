"""Discrete-event simulation of many engines behind a routing policy, in virtual time.

No sockets, no clock: `ClusterSimulator.run` replays a trace (`llmd_sim.trace`) against N
`EngineCore`s. At each arrival the router sees the request and one `EngineView` per engine and
returns an engine index; every engine then advances step by step, each step taking the time the
latency model gives it. The result has per-request TTFT / end-to-end latency / cached tokens and
cluster summaries.

Router protocol (what benchmark code adapts other schedulers to)::

    class Router(Protocol):
        def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int: ...

`TraceRequest` carries the prompt's token ids and ``block_hashes`` (computed by the cluster with
the engines' own hasher). `EngineView` exposes what a scraper and a KV-event index would know:
``num_waiting``, ``num_running``, ``kv_usage``, ``num_free_blocks`` and
``cached_prefix_blocks(block_hashes)``, the number of leading blocks of a prompt the engine holds
on GPU. Views read the engine as of its latest scheduling step.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmd_sim.engine import EngineConfig, EngineCore, FastBlockHasher, LoRA, Request
from llmd_sim.engine.kv_cache import Hasher
from llmd_sim.latency import LatencyModel
from llmd_sim.trace import TraceRequest


class EngineView:
    """A read-only view of one engine for routers."""

    __slots__ = ("_core", "index")

    def __init__(self, index: int, core: EngineCore) -> None:
        self.index = index
        self._core = core

    @property
    def num_waiting(self) -> int:
        return self._core.num_waiting

    @property
    def num_running(self) -> int:
        return self._core.num_running

    @property
    def kv_usage(self) -> float:
        return self._core.kv.usage

    @property
    def num_free_blocks(self) -> int:
        return self._core.kv.num_free_blocks

    @property
    def block_size(self) -> int:
        return self._core.block_size

    def cached_prefix_blocks(self, block_hashes: Sequence[Any]) -> int:
        """Leading blocks of `block_hashes` held in this engine's GPU prefix cache."""
        return self._core.kv.cached_prefix_blocks(block_hashes)


class Router(Protocol):
    """Picks the engine for a request. Must return an index into `engines`."""

    def route(self, request: TraceRequest, engines: Sequence[EngineView]) -> int: ...


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    engine: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    first_token: float
    finish: float
    preemptions: int

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        n = self.output_tokens - 1
        return (self.finish - self.first_token) / n if n > 0 else 0.0


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


@dataclass(slots=True)
class ClusterResult:
    records: list[RequestRecord]
    num_engines: int
    sim_time_s: float
    cpu_time_s: float
    wall_time_s: float
    steps: int
    per_engine_requests: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        recs = self.records
        n = len(recs)
        ttft = sorted(r.ttft for r in recs)
        e2e = sorted(r.e2e for r in recs)
        tpot = sorted(r.tpot for r in recs if r.output_tokens > 1)
        prompt = sum(r.prompt_tokens for r in recs)
        cached = sum(r.cached_tokens for r in recs)
        out_tokens = sum(r.output_tokens for r in recs)
        return {
            "requests": n,
            "sim_time_s": self.sim_time_s,
            "throughput_req_s": n / self.sim_time_s if self.sim_time_s else math.nan,
            "output_tokens_per_s": out_tokens / self.sim_time_s if self.sim_time_s else math.nan,
            "ttft_mean_s": sum(ttft) / n if n else math.nan,
            "ttft_p50_s": _pct(ttft, 0.5),
            "ttft_p90_s": _pct(ttft, 0.9),
            "ttft_p99_s": _pct(ttft, 0.99),
            "tpot_mean_s": sum(tpot) / len(tpot) if tpot else math.nan,
            "tpot_p99_s": _pct(tpot, 0.99),
            "e2e_p50_s": _pct(e2e, 0.5),
            "e2e_p99_s": _pct(e2e, 0.99),
            "prefix_hit_rate": cached / prompt if prompt else 0.0,
            "preemptions": sum(r.preemptions for r in recs),
            "engine_steps": self.steps,
            "cpu_time_s": self.cpu_time_s,
            "sim_requests_per_cpu_s": n / self.cpu_time_s if self.cpu_time_s else math.nan,
        }


class ClusterSimulator:
    """N engines and a router in virtual time."""

    def __init__(
        self,
        num_engines: int,
        config: EngineConfig,
        latency: LatencyModel,
        router: Router,
        *,
        hasher: Hasher | None = None,
        output_vocab: int = 32000,
        seed: int = 0,
    ) -> None:
        if num_engines < 1:
            raise ValueError("num_engines: must be at least 1")
        self.hasher: Hasher = hasher or FastBlockHasher(16)
        self.engines = [EngineCore(config, latency, self.hasher) for _ in range(num_engines)]
        self.views = [EngineView(i, e) for i, e in enumerate(self.engines)]
        self.router = router
        self.block_size = self.hasher.block_size
        self._prefix_hashes: dict[str, list[Any]] = {}
        self._loras: dict[str, LoRA] = {}
        rng = random.Random(seed)
        # Output tokens come from one random pool at per-request offsets (cheap, distinct).
        self._pool = rng.choices(range(output_vocab), k=1 << 16)

    def _hash_prompt(self, tr: TraceRequest) -> list[Any]:
        bs = self.block_size
        ids = tr.prompt_token_ids
        lora_name = tr.lora
        if tr.prefix_key and tr.prefix_len >= bs and not lora_name:
            key = tr.prefix_key
            n_prefix = tr.prefix_len // bs
            prefix = self._prefix_hashes.get(key)
            if prefix is None:
                prefix = self.hasher.hash_tokens(ids[: n_prefix * bs])
                self._prefix_hashes[key] = prefix
            rest = self.hasher.hash_tokens(
                ids[n_prefix * bs :], parent=prefix[-1], start_block=n_prefix
            )
            return prefix + rest
        return self.hasher.hash_tokens(ids, lora_name=lora_name, lora_path=lora_name)

    def _lora(self, name: str | None) -> LoRA | None:
        if not name:
            return None
        lora = self._loras.get(name)
        if lora is None:
            lora = self._loras[name] = LoRA(name, len(self._loras) + 1, name)
        return lora

    def _to_request(self, tr: TraceRequest, index: int) -> Request:
        if tr.output_token_ids is not None:
            out = list(tr.output_token_ids)
        else:
            pool = self._pool
            off = (index * 7919) % (len(pool) - tr.output_len) if len(pool) > tr.output_len else 0
            out = pool[off : off + tr.output_len]
            if len(out) < tr.output_len:
                out = (out * (tr.output_len // max(1, len(out)) + 1))[: tr.output_len]
        req = Request(
            tr.request_id,
            tr.prompt_token_ids,
            out,
            lora=self._lora(tr.lora),
            arrival_time=tr.arrival,
        )
        if tr.block_hashes is not None:
            req.block_hashes = list(tr.block_hashes)
        return req

    def run(self, trace: Iterable[TraceRequest]) -> ClusterResult:
        """Replay `trace` (arrival order) through the router and the engines to the end.

        Python's cyclic garbage collector is paused for the run and restored afterwards: the
        simulation makes no reference cycles, but every request holds lists of thousands of
        token ids and block hashes that each young-generation collection would traverse again
        (measured: ~15% of the CPU time of a 10-engine run). Reference counting still frees
        everything as usual.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(trace)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, trace: Iterable[TraceRequest]) -> ClusterResult:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        engines, views, router = self.engines, self.views, self.router
        n_engines = len(engines)
        # (step end or wake-up, seq, engine, token): a token that is no longer the engine's
        # current one marks a stale wake-up (an arrival started a step meanwhile).
        heap: list[tuple[float, int, int, int]] = []
        heappush, heappop = heapq.heappush, heapq.heappop
        busy = [False] * n_engines
        token = [0] * n_engines
        seq = 0
        steps = 0
        records: list[RequestRecord] = []
        per_engine = [0] * n_engines
        now = 0.0
        index = -1
        arrivals = iter(trace)
        while True:
            tr = next(arrivals, None)
            until = math.inf if tr is None else tr.arrival
            # Complete every step that ends at or before `until`, starting the next ones (the
            # hot loop: one iteration per engine step, so everything is inlined here).
            while heap and heap[0][0] <= until:
                t, _, e, tok = heappop(heap)
                if tok != token[e]:
                    continue
                now = t
                core = engines[e]
                if core.running or core.waiting:  # core.has_work()
                    res = core.step(t)
                    steps += 1
                    if res.finished:
                        record_finished(records, res.finished, e)
                    seq += 1
                    tok += 1
                    token[e] = tok
                    heappush(heap, (t + res.duration, seq, e, tok))
                else:
                    busy[e] = False
                    wake = core.next_wakeup()
                    if wake is not None:
                        seq += 1
                        heappush(heap, (max(wake, t), seq, e, tok))
            if tr is None:
                break
            index += 1
            if tr.arrival > now:
                now = tr.arrival
            if tr.block_hashes is None:
                tr.block_hashes = self._hash_prompt(tr)
            e = router.route(tr, views)
            if not 0 <= e < n_engines:
                raise ValueError(f"router returned engine {e}, not in [0, {n_engines})")
            req = self._to_request(tr, index)
            core = engines[e]
            core.add_request(req)
            per_engine[e] += 1
            tr.block_hashes = None  # the engine's request holds its own copy
            if not busy[e]:
                res = core.step(tr.arrival)
                steps += 1
                if res.finished:
                    record_finished(records, res.finished, e)
                seq += 1
                token[e] += 1
                heappush(heap, (res.end, seq, e, token[e]))
                busy[e] = True
        return ClusterResult(
            records=records,
            num_engines=n_engines,
            sim_time_s=now,
            cpu_time_s=time.process_time() - cpu0,
            wall_time_s=time.perf_counter() - wall0,
            steps=steps,
            per_engine_requests=per_engine,
        )


def record_finished(records: list[RequestRecord], finished: Sequence[Request], engine: int) -> None:
    """Append one `RequestRecord` per finished request, served by `engine`."""
    for r in finished:
        records.append(
            RequestRecord(
                r.request_id,
                engine,
                r.arrival_time,
                r.num_prompt_tokens,
                r.num_output_tokens,
                max(0, r.num_cached_tokens),
                r.first_token_time,
                r.finish_time,
                r.num_preemptions,
            )
        )
