"""Drives one `EngineCore` in wall-clock time inside the server's event loop.

Each iteration runs one scheduler step, publishes its KV events, waits for the step's modelled
duration (scaled by ``--time-scale``), then hands the step's tokens to the waiting HTTP handlers
and records vLLM's metrics. New requests join at the next step, as in vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from llmd_sdk.kvcache.events import KVEventBatch
from llmd_sdk.telemetry import get_logger

from llmd_sim.engine import EngineCore, Request, StepResult
from llmd_sim.kv_publisher import ZmqEventPublisher
from llmd_sim.metrics import EngineStats, LoRAInfo

log = get_logger("llmd_sim.runner")
_MAX_LAG = 0.05  # seconds


class Stream:
    """The per-request channel between the engine loop and an HTTP handler."""

    __slots__ = (
        "arrival",
        "done",
        "event",
        "first_token_at",
        "max_tokens_param",
        "pending",
        "req",
        "sent",
        "streaming",
    )

    def __init__(self, req: Request, streaming: bool, max_tokens_param: int | None) -> None:
        self.req = req
        self.streaming = streaming
        self.max_tokens_param = max_tokens_param
        self.event = asyncio.Event()
        self.pending: deque[int] = deque()  # output count after each step with new tokens
        self.sent = 0
        self.done = False
        self.arrival = 0.0
        self.first_token_at = 0.0

    async def wait(self) -> None:
        await self.event.wait()
        self.event.clear()


class EngineRunner:
    def __init__(
        self,
        core: EngineCore,
        rank: int,
        stats: EngineStats,
        publisher: ZmqEventPublisher | None = None,
        lora_info: LoRAInfo | None = None,
    ) -> None:
        self.core = core
        self.rank = rank
        self.stats = stats
        self.publisher = publisher
        self.lora_info = lora_info
        self.streams: dict[str, Stream] = {}
        self.active_streams = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_dispatch = 0.0

    # ----- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"engine-{self.rank}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for s in self.streams.values():
            s.done = True
            s.event.set()

    # ----- requests ---------------------------------------------------------------------------
    @property
    def load(self) -> int:
        """vLLM's data-parallel balancing score: waiting x 4 + running."""
        return self.core.num_waiting * 4 + self.core.num_running

    def submit(self, req: Request, streaming: bool, max_tokens_param: int | None) -> Stream:
        """Queue `req` for the next step (raises ValueError for requests the engine refuses)."""
        loop = asyncio.get_running_loop()
        req.arrival_time = loop.time()
        self.core.add_request(req)
        stream = Stream(req, streaming, max_tokens_param)
        stream.arrival = req.arrival_time
        self.streams[req.request_id] = stream
        if streaming:
            self.active_streams += 1
        self.stats.num_waiting = self.core.num_waiting
        self._wakeup.set()
        return stream

    def abort(self, request_id: str) -> None:
        """The client went away: drop the request and count it as aborted."""
        stream = self.streams.pop(request_id, None)
        if stream is None:
            return
        if stream.streaming:
            self.active_streams -= 1
        if self.core.abort_request(request_id) is not None:
            self.stats.request_success["abort"] += 1
        stream.done = True
        self._refresh_gauges()

    def reset_prefix_cache(self) -> bool:
        ok = self.core.reset_prefix_cache()
        self._publish(self.core.kv.take_events())
        return ok

    # ----- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        anchor: float | None = None  # when the previous step ended, in model time
        while True:
            try:
                if not core.has_work():
                    anchor = None
                    wake = core.next_wakeup()
                    self._wakeup.clear()
                    timeout = None if wake is None else max(0.0, wake - loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout)
                    if not core.has_work() and core.next_wakeup() is None:
                        continue
                now = loop.time()
                # Back-to-back steps start where the previous one ended, as a GPU keeps stepping
                # while the API server is busy: a timer that fired late because the event loop
                # was writing hundreds of SSE chunks must not stretch every step (the next sleep
                # is shorter instead). Falling further behind than _MAX_LAG re-anchors on the
                # wall clock: then the server, not the model, is the bottleneck.
                start = anchor if anchor is not None and now - anchor < _MAX_LAG else now
                core.track_tokens = self.active_streams > 0
                result = core.step(start)
                self._publish(result.events)
                delay = result.end - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
                self._dispatch(result, loop.time())
                anchor = result.end if result.duration > 0 else None
            except asyncio.CancelledError:
                raise
            except Exception:  # the engine must not die of one bad step
                log.exception("engine_step_failed", rank=self.rank)
                await asyncio.sleep(0.01)

    def _publish(self, events: Sequence[Any]) -> None:
        if events and self.publisher is not None:
            self.publisher.publish(KVEventBatch(ts=time.time(), events=list(events)))

    def _refresh_gauges(self) -> None:
        core, st = self.core, self.stats
        st.num_running = core.num_running
        st.num_waiting = core.num_waiting
        st.kv_cache_usage = core.kv_usage

    def _dispatch(self, res: StepResult, now: float) -> None:
        core, st, streams = self.core, self.stats, self.streams
        self._refresh_gauges()
        kvs = core.kv.stats
        st.prefix_queries = kvs.queries
        st.prefix_hits = kvs.hits
        st.external_prefix_queries = kvs.external_queries
        st.external_prefix_hits = kvs.external_hits
        st.num_preemptions = core.num_preemptions_total
        st.prompt_tokens = core.num_prompt_tokens_total
        st.generation_tokens = core.num_generation_tokens_total
        if res.num_prefill_tokens or res.num_decode_seqs:
            st.iteration_tokens.observe(res.num_prefill_tokens + res.num_decode_seqs)
        if res.num_decode_seqs and self._last_dispatch:
            st.itl.observe(now - self._last_dispatch, res.num_decode_seqs)
        self._last_dispatch = now
        for r in res.first_tokens:
            s = streams.get(r.request_id)
            if s is None:
                continue
            s.first_token_at = now
            st.ttft.observe(now - s.arrival)
            if s.streaming:
                s.pending.append(r.num_output_tokens)
                s.event.set()
        if res.decoded:
            for r in res.decoded:
                s = streams.get(r.request_id)
                if s is None or not s.streaming:
                    continue
                core.materialize(r)
                s.pending.append(r.num_output_tokens)
                s.event.set()
        for r in res.finished:
            s = streams.pop(r.request_id, None)
            if s is None:
                continue
            if s.streaming:
                self.active_streams -= 1
                if not s.pending or s.pending[-1] != r.num_output_tokens:
                    s.pending.append(r.num_output_tokens)
            s.done = True
            s.event.set()
            self._record_finished(s, r, now)
        if self.lora_info is not None:
            running, waiting = core.lora_adapters()
            self.lora_info.running = ",".join(running)
            self.lora_info.waiting = ",".join(waiting)
            self.lora_info.updated = time.time()

    def _record_finished(self, s: Stream, r: Request, now: float) -> None:
        st = self.stats
        reason = r.finish_reason or "stop"
        st.request_success[reason] = st.request_success.get(reason, 0) + 1
        st.e2e.observe(now - s.arrival)
        first = s.first_token_at or now
        sched = r.first_scheduled_time if r.first_scheduled_time >= 0 else s.arrival
        st.queue_time.observe(max(0.0, sched - s.arrival))
        st.prefill_time.observe(max(0.0, first - sched))
        st.decode_time.observe(max(0.0, now - first))
        st.inference_time.observe(max(0.0, now - sched))
        st.request_prompt_tokens.observe(r.num_prompt_tokens)
        st.request_generation_tokens.observe(r.num_output_tokens)
        if r.num_output_tokens > 1:
            st.time_per_output_token.observe((now - first) / (r.num_output_tokens - 1))
        if s.max_tokens_param:
            st.max_tokens_param.observe(s.max_tokens_param)
        st.request_max_generation_tokens.observe(r.max_tokens)
        st.n_param.observe(1)
