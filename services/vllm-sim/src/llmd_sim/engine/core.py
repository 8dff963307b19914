"""One engine core: vLLM v1's continuous-batching scheduler over a simulated KV cache.

Each `step` is one scheduler iteration, exactly in vLLM's order:

1. running requests in order: every decoding request gets one token; a partially prefilled
   request gets the rest of the token budget (chunked prefill). When a request needs a block and
   none is free, the *last* running request is preempted (recompute: its blocks are freed, it goes
   back to the front of the waiting queue keeping its output tokens);
2. if nothing was preempted, waiting requests in order while the budget, ``max_num_seqs`` and
   ``max_loras`` allow: prefix-cache lookup, then slots for the uncached part;
3. the step's duration comes from the latency model; every request whose scheduled tokens reach
   the end of its sequence samples one token.

Decoding requests advance in lock-step, one token per step, so their progress is kept implicitly
(start step and start position) and they only cost work at block boundaries and when they
finish. That makes a step O(boundary events + prefills) instead of O(running requests), which is
what lets `llmd_sim.cluster` simulate thousands of requests per CPU-second.

The core is pure: no clock, no I/O. The caller passes the step's start time and gets back its
duration, the tokens produced and the KV events.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from llmd_sim.engine.kv_cache import ComputedBlocks, Hasher, KVCacheManager, KVEvent
from llmd_sim.engine.request import LoRA, Request, RequestStatus
from llmd_sim.latency import LatencyModel


@dataclass(slots=True)
class EngineConfig:
    """Scheduler and cache limits, named after vLLM's flags."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 32768
    num_gpu_blocks: int = 8192
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    max_loras: int = 1
    cpu_offload_blocks: int = 0
    engine_id: str = "llmd-sim"
    kv_side_channel_host: str = "127.0.0.1"
    kv_side_channel_port: int = 5600
    tp_size: int = 1

    def validate(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens: ({self.max_num_batched_tokens}) must be greater than or "
                f"equal to max_num_seqs ({self.max_num_seqs})"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens: ({self.max_num_batched_tokens}) is smaller than "
                f"max_model_len ({self.max_model_len}) and chunked prefill is disabled"
            )
        for name in ("max_num_seqs", "max_model_len", "max_loras"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")


class StepResult:
    """What one scheduler iteration did.

    The request lists are filled only when non-empty (an empty tuple otherwise): most steps of a
    large simulation produce nothing but decode tokens, and they are the hot path.
    """

    __slots__ = (
        "decode_context_tokens",
        "decoded",
        "duration",
        "events",
        "finished",
        "first_tokens",
        "num_decode_seqs",
        "num_generated",
        "num_prefill_tokens",
        "num_prompt_tokens",
        "preempted",
        "start",
    )

    def __init__(self, start: float, duration: float = 0.0) -> None:
        self.start = start
        self.duration = duration
        self.num_prefill_tokens = 0
        self.num_decode_seqs = 0
        self.decode_context_tokens = 0
        self.num_generated = 0
        self.num_prompt_tokens = 0
        # Requests that sampled their first token in this step.
        self.first_tokens: Sequence[Request] = ()
        # Requests that sampled a later token (filled only when the core tracks tokens).
        self.decoded: Sequence[Request] = ()
        self.finished: Sequence[Request] = ()
        self.preempted: Sequence[Request] = ()
        self.events: Sequence[KVEvent] = ()

    @property
    def end(self) -> float:
        return self.start + self.duration


class EngineCore:
    """A vLLM engine core in virtual time."""

    def __init__(
        self,
        config: EngineConfig,
        latency: LatencyModel,
        hasher: Hasher,
        *,
        enable_kv_events: bool = False,
        use_int_hashes: bool = False,
        track_tokens: bool = False,
    ) -> None:
        config.validate()
        self.config = config
        self.latency = latency
        self.block_size = hasher.block_size
        self.kv = KVCacheManager(
            config.num_gpu_blocks,
            hasher,
            enable_prefix_caching=config.enable_prefix_caching,
            enable_events=enable_kv_events,
            use_int_hashes=use_int_hashes,
            cpu_blocks=config.cpu_offload_blocks,
        )
        self.track_tokens = track_tokens
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.remote_waiting: list[Request] = []
        self.running: list[Request] = []
        self.prefilling: list[Request] = []
        self.decoding: dict[Request, None] = {}
        self.step_index = 0
        self._order = 0
        self._dec_ctx_base = 0
        self._events: dict[int, list[tuple[Request, int]]] = {}
        self._remote_heap: list[tuple[float, int, Request]] = []
        # Cumulative counters (vLLM's counters and histograms read these).
        self.num_preemptions_total = 0
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0

    # ----- admission --------------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id: {req.request_id!r} is already in this engine")
        if req.num_prompt_tokens + 1 > self.config.max_model_len:
            raise ValueError(
                f"prompt: {req.num_prompt_tokens} tokens leave no room for output within "
                f"max_model_len {self.config.max_model_len}"
            )
        room = self.config.max_model_len - req.num_prompt_tokens
        if req.max_tokens > room:
            # vLLM stops at max_model_len: the request finishes "length" there.
            req.output_plan = req.output_plan[:room]
            req.max_tokens = room
            req.tokens = req.prompt_token_ids + req.output_plan
            req.finish_status = RequestStatus.FINISHED_LENGTH_CAPPED
        self.requests[req.request_id] = req
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def abort_request(self, request_id: str) -> Request | None:
        """Remove a request wherever it is (client went away); its blocks are freed."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req.status == RequestStatus.RUNNING:
            self._remove_running(req)
        elif req.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
            self.remote_waiting.remove(req)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        self.kv.free_request(req)
        req.status = RequestStatus.FINISHED_ABORTED
        return req

    # ----- state ------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.remote_waiting)

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    def has_work(self) -> bool:
        """True when a step would do something now (not only waiting on remote KV)."""
        return bool(self.running or self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def next_wakeup(self) -> float | None:
        """When the earliest remote KV transfer completes (None when none is pending)."""
        return self._remote_heap[0][0] if self._remote_heap else None

    def materialize(self, req: Request) -> None:
        """Bring a decoding request's counters up to the last completed step."""
        if req.dec_start >= 0:
            done = self.step_index - req.dec_start
            req.num_computed_tokens = req.dec_c0 + done
            req.num_output_tokens = req.dec_out0 + done

    def lora_adapters(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests per adapter, (running, waiting): `vllm:lora_requests_info`'s labels."""
        running: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for r in self.running:
            if r.lora:
                running[r.lora.name] = running.get(r.lora.name, 0) + 1
        for r in self.waiting:
            if r.lora:
                waiting[r.lora.name] = waiting.get(r.lora.name, 0) + 1
        return running, waiting

    def reset_prefix_cache(self) -> bool:
        return self.kv.reset()

    # ----- the step ---------------------------------------------------------------------------
    def step(self, now: float) -> StepResult:
        # Hot path of every simulation: attributes are bound to locals, helpers inlined where a
        # call per request per step would dominate. The order of every operation is vLLM's (see
        # the module docstring); `tests/engine/reference.py` is the slow, plain statement of it.
        cfg = self.config
        kv = self.kv
        bs = self.block_size
        S = self.step_index
        result = StepResult(now)
        if self._remote_heap:
            self._admit_remote(now)
        budget = cfg.max_num_batched_tokens
        preempted: list[Request] = []
        running = self.running

        # 1a. decoding requests at a block boundary or at their last token.
        finishing: list[Request] = []
        evs = self._events.pop(S, None)
        if evs:
            live = [r for r, epoch in evs if r.epoch == epoch and r.dec_start >= 0]
            if len(live) > 1:
                live.sort(key=_sched_order)
            events = self._events
            for r in live:
                ds = r.dec_start
                if ds < 0:  # preempted earlier in this loop
                    continue
                c0 = r.dec_c0
                p = c0 + (S - ds)
                if p >= len(r.blocks) * bs:
                    while not kv.allocate_one(r):
                        victim = running[-1]
                        self._preempt(victim)
                        preempted.append(victim)
                        if victim is r:
                            break
                    if r.dec_start < 0:
                        continue
                q = p + 1
                m = q % bs
                if not m and r.num_cached_blocks * bs <= p:
                    kv.cache_next_block(r)
                last = r.dec_last
                if last == S:
                    finishing.append(r)
                else:
                    # The next block boundary or last token at or after position q (what
                    # `_schedule_event` does, inlined).
                    if m and m != bs - 1:
                        q += bs - 1 - m
                    at = ds + (q - c0)
                    if last < at:
                        at = last
                    pending = events.get(at)
                    if pending is None:
                        events[at] = [(r, r.epoch)]
                    else:
                        pending.append((r, r.epoch))
        n_dec = len(self.decoding)
        budget -= n_dec
        ctx_dec = self._dec_ctx_base + n_dec * S if n_dec else 0

        # 1b. partially prefilled requests (a suffix of the running list).
        scheduled: list[tuple[Request, int]] = []
        prefill_tokens = 0
        attn_pairs = 0
        if self.prefilling:
            for r in list(self.prefilling):
                if budget <= 0 or r.status != RequestStatus.RUNNING:
                    break
                n = min(r.num_tokens - r.num_computed_tokens, budget)
                stopped = False
                while not kv.allocate_slots(r, n):
                    victim = running[-1]
                    self._preempt(victim)
                    preempted.append(victim)
                    if victim is r:
                        stopped = True
                        break
                if stopped:
                    break
                scheduled.append((r, n))
                budget -= n
                prefill_tokens += n
                attn_pairs += n * r.num_computed_tokens + n * (n + 1) // 2

        # 2. waiting requests, unless this step preempted.
        cpu_loaded_blocks = 0
        if not preempted and self.waiting:
            skipped: list[Request] = []
            running_loras = {r.lora.name for r in running if r.lora}
            waiting = self.waiting
            max_num_seqs = cfg.max_num_seqs
            while waiting and budget > 0 and len(running) < max_num_seqs:
                r = waiting[0]
                if (
                    r.lora
                    and r.lora.name not in running_loras
                    and len(running_loras) >= cfg.max_loras
                ):
                    skipped.append(waiting.popleft())
                    continue
                computed: ComputedBlocks | None = None
                n_computed = r.num_computed_tokens
                num_tokens = r.num_prompt_tokens + r.num_output_tokens
                if n_computed == 0:
                    computed = kv.get_computed_blocks(r, num_tokens)
                    if r.kv_transfer_params and self._wants_remote_kv(r):
                        outcome = self._start_remote_load(r, computed, now)
                        if outcome == "parked":
                            waiting.popleft()
                            continue
                        if outcome == "blocked":
                            break
                    n_computed = computed.num_blocks * bs
                n = num_tokens - n_computed
                if not cfg.enable_chunked_prefill and n > budget:
                    break
                if n > budget:
                    n = budget
                if not kv.allocate_slots(r, n, computed):
                    break
                waiting.popleft()
                if computed is not None:
                    kv.record_query(r, num_tokens, computed)
                    cpu_loaded_blocks += len(computed.cpu_hashes)
                    r.num_computed_tokens = n_computed
                    if r.num_cached_tokens < 0:
                        r.num_cached_tokens = n_computed
                        r.num_external_cached_tokens = len(computed.cpu_hashes) * bs
                elif r.num_cached_tokens < 0:
                    r.num_cached_tokens = n_computed
                if r.first_scheduled_time < 0:
                    r.first_scheduled_time = now
                r.status = RequestStatus.RUNNING
                self._order += 1
                r.sched_order = self._order
                running.append(r)
                self.prefilling.append(r)
                if r.lora:
                    running_loras.add(r.lora.name)
                scheduled.append((r, n))
                budget -= n
                prefill_tokens += n
                attn_pairs += n * r.num_computed_tokens + n * (n + 1) // 2
            if skipped:
                waiting.extendleft(reversed(skipped))

        # 3. execute.
        duration = self.latency.step_time(prefill_tokens, attn_pairs, n_dec, ctx_dec)
        if cpu_loaded_blocks:
            duration += self.latency.cpu_load_time(cpu_loaded_blocks, bs)
        result.duration = duration
        if preempted:
            result.preempted = preempted
            self.num_preemptions_total += len(preempted)
        result.num_prefill_tokens = prefill_tokens
        result.num_decode_seqs = n_dec
        result.decode_context_tokens = ctx_dec
        end = now + duration
        generated = n_dec
        track = self.track_tokens
        decoded: list[Request] | None = list(self.decoding) if track and n_dec else None
        finished: list[Request] | None = None

        # 4. update, in running order (which is the order blocks are freed in): decoders that
        # sampled their last token, then prefills that reached the end of their sequence.
        if finishing:
            finished = []
            decoding = self.decoding
            for r in finishing:
                decoding.pop(r, None)
                self._dec_ctx_base -= r.dec_c0 - r.dec_start + 1
                r.num_computed_tokens = r.dec_c0 + (S - r.dec_start) + 1
                r.num_output_tokens = r.max_tokens
                r.dec_start = -1
                self._finish(r, end, finished)
        if scheduled:
            first_tokens: list[Request] | None = None
            prompt_tokens = 0
            for r, n in scheduled:
                c = r.num_computed_tokens + n
                r.num_computed_tokens = c
                if c < r.num_prompt_tokens + r.num_output_tokens:
                    continue
                r.num_output_tokens += 1
                generated += 1
                if r.first_token_time < 0:
                    r.first_token_time = end
                    if first_tokens is None:
                        first_tokens = [r]
                    else:
                        first_tokens.append(r)
                    prompt_tokens += r.num_prompt_tokens
                elif track:
                    if decoded is None:
                        decoded = [r]
                    else:
                        decoded.append(r)
                self.prefilling.remove(r)
                if r.num_output_tokens >= r.max_tokens:
                    if finished is None:
                        finished = []
                    self._finish(r, end, finished)
                else:
                    self._start_decoding(r, S + 1)
            if first_tokens:
                result.first_tokens = first_tokens
                result.num_prompt_tokens = prompt_tokens
                self.num_prompt_tokens_total += prompt_tokens
        result.num_generated = generated
        if decoded:
            result.decoded = decoded
        if finished:
            result.finished = finished
        self.num_generation_tokens_total += generated
        if kv.enable_events:
            result.events = kv.take_events()
        self.step_index = S + 1
        return result

    # ----- internals --------------------------------------------------------------------------
    def _start_decoding(self, r: Request, start_step: int) -> None:
        r.dec_start = start_step
        r.dec_c0 = r.num_computed_tokens
        r.dec_out0 = r.num_output_tokens
        r.dec_last = start_step + r.max_tokens - r.dec_out0 - 1
        r.epoch += 1
        self.decoding[r] = None
        self._dec_ctx_base += r.dec_c0 - start_step + 1
        self._schedule_event(r, r.dec_c0)

    def _schedule_event(self, r: Request, from_pos: int) -> None:
        """Queue `r`'s next block boundary or last token at or after position `from_pos`."""
        bs = self.block_size
        m = from_pos % bs
        pos = from_pos if (m == 0 or m == bs - 1) else from_pos + (bs - 1 - m)
        step = r.dec_start + (pos - r.dec_c0)
        last = r.dec_last
        if last < step:
            step = last
        self._events.setdefault(step, []).append((r, r.epoch))

    def _remove_running(self, r: Request) -> None:
        self.running.remove(r)
        if r.dec_start >= 0:
            self.materialize(r)
            self.decoding.pop(r, None)
            self._dec_ctx_base -= r.dec_c0 - r.dec_start + 1
            r.dec_start = -1
            r.epoch += 1
        else:
            self.prefilling.remove(r)

    def _preempt(self, r: Request) -> None:
        self._remove_running(r)
        self.kv.free_request(r)
        r.num_computed_tokens = 0
        r.status = RequestStatus.PREEMPTED
        r.num_preemptions += 1
        self.waiting.appendleft(r)

    def _finish(self, r: Request, end: float, finished: list[Request]) -> None:
        self.running.remove(r)
        r.status = r.finish_status
        r.finish_time = end
        if r.kv_transfer_params and r.kv_transfer_params.get("do_remote_decode"):
            r.kv_transfer_result = self._transfer_params(r)
        self.kv.free_request(r)
        self.requests.pop(r.request_id, None)
        finished.append(r)

    def _transfer_params(self, r: Request) -> dict[str, Any] | None:
        """What vLLM's NixlConnector returns for a finished prefill (do_remote_decode)."""
        if r.status != RequestStatus.FINISHED_LENGTH_CAPPED:
            return None
        full = r.num_computed_tokens // self.block_size
        cfg = self.config
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": r.blocks[:full],
            "remote_engine_id": cfg.engine_id,
            "remote_request_id": r.request_id,
            "remote_host": cfg.kv_side_channel_host,
            "remote_port": cfg.kv_side_channel_port,
            "tp_size": cfg.tp_size,
        }

    @staticmethod
    def _wants_remote_kv(r: Request) -> bool:
        params = r.kv_transfer_params
        return bool(params and params.get("do_remote_prefill") and r.remote_tokens == 0)

    def _start_remote_load(self, r: Request, computed: ComputedBlocks, now: float) -> str:
        """Reserve blocks for KV pulled from a prefill engine; the request then waits for it.

        Returns "parked" (waiting for the transfer), "blocked" (no free blocks yet: it stays
        first in line) or "local" (nothing left to pull: schedule it as usual).
        """
        params = r.kv_transfer_params or {}
        bs = self.block_size
        remote_ids = params.get("remote_block_ids") or []
        local = computed.num_blocks * bs
        covered = min(len(remote_ids) * bs, r.num_tokens - 1)
        to_load = covered - local
        if to_load <= 0:
            params["do_remote_prefill"] = False
            return "local"
        if not self.kv.allocate_slots(r, to_load, computed, cache=False):
            return "blocked"
        self.kv.record_query(r, r.num_tokens, computed)
        self.kv.stats.external_queries += r.num_tokens - local
        self.kv.stats.external_hits += to_load
        r.num_computed_tokens = local
        r.remote_tokens = to_load
        r.num_cached_tokens = local + to_load
        r.num_external_cached_tokens = to_load
        r.status = RequestStatus.WAITING_FOR_REMOTE_KVS
        r.remote_ready_time = now + self.latency.kv_transfer_time(-(-to_load // bs), bs)
        if r.first_scheduled_time < 0:
            r.first_scheduled_time = now
        self.remote_waiting.append(r)
        self._order += 1
        heapq.heappush(self._remote_heap, (r.remote_ready_time, self._order, r))
        return "parked"

    def _admit_remote(self, now: float) -> None:
        heap = self._remote_heap
        ready: list[Request] = []
        while heap and heap[0][0] <= now:
            _, _, r = heapq.heappop(heap)
            if r.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                ready.append(r)
        for r in reversed(ready):
            self.remote_waiting.remove(r)
            r.num_computed_tokens += r.remote_tokens
            self.kv.cache_blocks(r, r.num_computed_tokens)
            if r.kv_transfer_params is not None:
                r.kv_transfer_params["do_remote_prefill"] = False
            r.status = RequestStatus.WAITING
            self.waiting.appendleft(r)


_sched_order = attrgetter("sched_order")


__all__ = ["EngineConfig", "EngineCore", "LoRA", "Request", "StepResult"]
