"""Admission and queueing when the pool is saturated.

- No candidate endpoint: 503.
- Saturated (no candidate has capacity, per the utilization detector) and the request is
  sheddable (objective priority < 0): 429 at once.
- Saturated, priority >= 0, flow control on: the request waits in its priority band. Waiters
  leave highest band first, oldest first within a band (round-robin across fairness ids when the
  band says so), as endpoints regain capacity: after each fresh metrics scrape, at most as many
  as there are endpoints with capacity, since the scrape cannot yet reflect what was released.
  A full band or queue answers 429; a wait past the TTL answers 503.
- Saturated and flow control off: scheduled anyway (upstream's behaviour without the gate).

Every request ends in exactly one `Outcome`, which the caller counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmd_epp.flowcontrol.saturation import UtilizationDetector
from llmd_epp.scheduling.types import Endpoint

DEFAULT_TTL = 30.0


class Outcome(enum.Enum):
    DISPATCHED = "dispatched"  # go on to scheduling
    SHED = "shed"  # 429: sheddable request, pool saturated
    REJECTED_CAPACITY = "rejected_capacity"  # 429: queue full
    EVICTED_TTL = "timeout"  # 503: waited too long
    NO_ENDPOINTS = "no_endpoints"  # 503


@dataclass(slots=True)
class BandLimits:
    max_requests: int | None = None
    max_bytes: int | None = None
    round_robin: bool = False


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[bool]
    priority: int
    fairness_id: str
    size: int
    enqueued: float


@dataclass(slots=True)
class _Band:
    limits: BandLimits
    flows: dict[str, deque[_Waiter]] = field(default_factory=dict)
    order: deque[str] = field(default_factory=deque)  # fairness ids, round-robin order
    count: int = 0
    bytes: int = 0


class FlowController:
    def __init__(
        self,
        detector: UtilizationDetector,
        candidates: Callable[[], list[Endpoint]],
        metrics_generation: Callable[[], int],
        *,
        enabled: bool = True,
        default_ttl: float = DEFAULT_TTL,
        max_requests: int | None = None,
        max_bytes: int | None = None,
        bands: dict[int, BandLimits] | None = None,
        default_band: BandLimits | None = None,
        poll_interval: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
        on_queue_change: Callable[[int, str, int], None] | None = None,
    ) -> None:
        self.detector = detector
        self.candidates = candidates
        self.metrics_generation = metrics_generation
        self.enabled = enabled
        self.default_ttl = default_ttl
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.band_limits = dict(bands or {})
        self.default_band = default_band or BandLimits()
        self.poll_interval = poll_interval
        self.clock = clock
        self.on_queue_change = on_queue_change
        self._bands: dict[int, _Band] = {}
        self._total = 0
        self._total_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._released_at_generation = -1

    @property
    def queued(self) -> int:
        return self._total

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for band in self._bands.values():
            for flow in band.flows.values():
                for w in flow:
                    if not w.future.done():
                        w.future.set_result(False)

    async def admit(
        self,
        candidates: list[Endpoint],
        priority: int,
        fairness_id: str = "",
        size: int = 0,
        ttl: float | None = None,
    ) -> tuple[Outcome, float | None]:
        """How this request proceeds, and how long it waited in a queue (None: it did not)."""
        if not candidates:
            return Outcome.NO_ENDPOINTS, None
        now = self.clock()
        saturated = self.detector.saturated(candidates, now)
        if saturated and priority < 0:
            return Outcome.SHED, None
        # With others already waiting, a newcomer queues behind them even if capacity just
        # opened: the dispatcher hands that capacity out in priority order.
        if not self.enabled or not (saturated or self._total):
            return Outcome.DISPATCHED, None
        band = self._band(priority)
        lim = band.limits
        if (
            (self.max_requests is not None and self._total >= self.max_requests)
            or (self.max_bytes is not None and self._total_bytes + size > self.max_bytes)
            or (lim.max_requests is not None and band.count >= lim.max_requests)
            or (lim.max_bytes is not None and band.bytes + size > lim.max_bytes)
        ):
            return Outcome.REJECTED_CAPACITY, None
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), priority, fairness_id, size, now)
        self._push(band, waiter)
        self.start()
        self._wake.set()
        try:
            ok = await asyncio.wait_for(asyncio.shield(waiter.future), ttl or self.default_ttl)
        except TimeoutError:
            self._discard(waiter)
            return Outcome.EVICTED_TTL, self.clock() - now
        except asyncio.CancelledError:
            self._discard(waiter)
            raise
        waited = self.clock() - now
        if not ok or not self.candidates():
            return Outcome.NO_ENDPOINTS, waited
        return Outcome.DISPATCHED, waited

    # ------------------------------------------------------------------ queues
    def _band(self, priority: int) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band(self.band_limits.get(priority, self.default_band))
        return band

    def _push(self, band: _Band, w: _Waiter) -> None:
        flow = band.flows.get(w.fairness_id)
        if flow is None:
            flow = band.flows[w.fairness_id] = deque()
            band.order.append(w.fairness_id)
        flow.append(w)
        band.count += 1
        band.bytes += w.size
        self._total += 1
        self._total_bytes += w.size
        self._notify(w.priority, w.fairness_id, len(flow))

    def _discard(self, w: _Waiter) -> None:
        band = self._bands.get(w.priority)
        flow = band.flows.get(w.fairness_id) if band else None
        if band is None or flow is None or w not in flow:
            return
        flow.remove(w)
        self._account_removal(band, w, flow)

    def _account_removal(self, band: _Band, w: _Waiter, flow: deque[_Waiter]) -> None:
        band.count -= 1
        band.bytes -= w.size
        self._total -= 1
        self._total_bytes -= w.size
        self._notify(w.priority, w.fairness_id, len(flow))
        if not flow:
            del band.flows[w.fairness_id]
            band.order.remove(w.fairness_id)

    def _notify(self, priority: int, fairness_id: str, size: int) -> None:
        if self.on_queue_change is not None:
            self.on_queue_change(priority, fairness_id, size)

    def _pop_next(self) -> _Waiter | None:
        for priority in sorted(self._bands, reverse=True):
            band = self._bands[priority]
            if not band.count:
                continue
            if band.limits.round_robin:
                fid = band.order[0]
                band.order.rotate(-1)
            else:  # strict: the oldest head across flows
                fid = min(band.flows, key=lambda f: band.flows[f][0].enqueued)
            flow = band.flows[fid]
            w = flow.popleft()
            self._account_removal(band, w, flow)
            return w
        return None

    async def _dispatch_loop(self) -> None:
        while True:
            if not self._total:
                self._wake.clear()
                await self._wake.wait()
                continue
            cands = self.candidates()
            if not cands:
                while (w := self._pop_next()) is not None:
                    if not w.future.done():
                        w.future.set_result(False)
                continue
            gen = self.metrics_generation()
            if gen != self._released_at_generation:
                now = self.clock()
                free = sum(1 for e in cands if self.detector.has_capacity(e, now))
                released = 0
                while released < free and (w := self._pop_next()) is not None:
                    if not w.future.done():
                        w.future.set_result(True)
                        released += 1
                if released:
                    self._released_at_generation = gen
            await asyncio.sleep(self.poll_interval)
