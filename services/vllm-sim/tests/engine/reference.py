"""A deliberately naive scheduler: vLLM v1's loop written out explicitly, one request at a time.

`EngineCore` keeps decoding requests implicit for speed; this reference touches every running
request every step exactly as vLLM's `Scheduler.schedule` does, so the two can be compared step by
step on random workloads. It shares only the KV block manager (tested on its own).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmd_sim.engine import EngineConfig, KVCacheManager, Request, RequestStatus
from llmd_sim.engine.kv_cache import Hasher, KVEvent
from llmd_sim.latency import LatencyModel


@dataclass
class RefStep:
    duration: float
    num_prefill_tokens: int
    num_decode_seqs: int
    first_tokens: list[str] = field(default_factory=list)
    finished: list[tuple[str, int, str | None]] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    events: list[KVEvent] = field(default_factory=list)


class ReferenceScheduler:
    def __init__(self, config: EngineConfig, latency: LatencyModel, hasher: Hasher) -> None:
        self.cfg = config
        self.latency = latency
        self.bs = hasher.block_size
        self.kv = KVCacheManager(config.num_gpu_blocks, hasher, enable_events=True)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.dec: set[str] = set()  # sampled since (re)admission: a one-token step is a decode
        self.unfinished = 0

    def add_request(self, req: Request) -> None:
        self.waiting.append(req)
        self.unfinished += 1

    def _preempt(self, r: Request) -> None:
        self.kv.free_request(r)
        self.dec.discard(r.request_id)
        r.num_computed_tokens = 0
        r.status = RequestStatus.PREEMPTED
        r.num_preemptions += 1
        self.waiting.appendleft(r)

    def step(self) -> RefStep:
        cfg, kv, bs = self.cfg, self.kv, self.bs
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.num_tokens - r.num_computed_tokens, budget)
            stopped = False
            while not kv.allocate_slots(r, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is r:
                    stopped = True
                    break
            if stopped:
                break
            scheduled.append((r, n))
            budget -= n
            i += 1
        if not preempted:
            skipped: list[Request] = []
            while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
                r = self.waiting[0]
                loras = {x.lora.name for x in self.running if x.lora}
                if r.lora and r.lora.name not in loras and len(loras) >= cfg.max_loras:
                    skipped.append(self.waiting.popleft())
                    continue
                computed = kv.get_computed_blocks(r, r.num_tokens)
                n_computed = computed.num_blocks * bs
                n = min(r.num_tokens - n_computed, budget)
                if not kv.allocate_slots(r, n, computed):
                    break
                self.waiting.popleft()
                kv.record_query(r, r.num_tokens, computed)
                r.num_computed_tokens = n_computed
                r.status = RequestStatus.RUNNING
                self.running.append(r)
                scheduled.append((r, n))
                budget -= n
            self.waiting.extendleft(reversed(skipped))
        prefill = attn = dec = ctx = 0
        for r, n in scheduled:
            if r.request_id in self.dec:
                dec += 1
                ctx += r.num_computed_tokens + 1
            else:
                prefill += n
                attn += n * r.num_computed_tokens + n * (n + 1) // 2
        out = RefStep(self.latency.step_time(prefill, attn, dec, ctx), prefill, dec)
        out.preempted = [r.request_id for r in preempted]
        for r, n in scheduled:
            r.num_computed_tokens += n
            if r.num_computed_tokens < r.num_tokens:
                continue
            r.num_output_tokens += 1
            self.dec.add(r.request_id)
            if r.first_token_time < 0:
                r.first_token_time = 0.0
                out.first_tokens.append(r.request_id)
            if r.num_output_tokens >= r.max_tokens:
                self.running.remove(r)
                self.dec.discard(r.request_id)
                r.status = r.finish_status
                kv.free_request(r)
                self.unfinished -= 1
                out.finished.append((r.request_id, r.num_output_tokens, r.finish_reason))
        out.events = kv.take_events()
        return out
