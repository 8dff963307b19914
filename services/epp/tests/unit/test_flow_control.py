"""Saturation detection and flow control: shed, queue by priority, time out, reject."""

from __future__ import annotations

import asyncio

from llmd_epp.flowcontrol.controller import BandLimits, FlowController, Outcome
from llmd_epp.flowcontrol.saturation import UtilizationDetector
from llmd_epp.scheduling import Endpoint

from .helpers import ep, eventually


class Pool:
    """Endpoints whose metrics the test changes, with a scrape generation counter."""

    def __init__(self, *eps: Endpoint) -> None:
        self.eps = list(eps)
        self.generation = 0
        self.now = 100.0

    def scrape(self) -> None:
        self.generation += 1
        for e in self.eps:
            e.metrics.updated_at = self.now


def controller(pool: Pool, **kw: object) -> FlowController:
    return FlowController(
        UtilizationDetector(queue_depth=5, kv_util=0.8, staleness=1.0),
        lambda: pool.eps,
        lambda: pool.generation,
        clock=lambda: pool.now,
        poll_interval=0.001,
        **kw,  # type: ignore[arg-type]
    )


def test_detector_thresholds_and_staleness() -> None:
    d = UtilizationDetector(queue_depth=5, kv_util=0.8, staleness=0.2)
    fresh = ep(1, waiting=4, kv_usage=0.5, updated_at=10.0)
    assert d.has_capacity(fresh, 10.1)
    assert not d.has_capacity(fresh, 10.5)  # stale
    assert not d.has_capacity(ep(2, waiting=5, updated_at=10.0), 10.0)
    assert not d.has_capacity(ep(3, kv_usage=0.8, updated_at=10.0), 10.0)
    assert d.saturated([ep(4, waiting=9, updated_at=10.0)], 10.0)
    assert not d.saturated([ep(4, waiting=9, updated_at=10.0), fresh], 10.0)
    d.require_fresh = False
    assert d.has_capacity(fresh, 99.0)


async def test_unsaturated_dispatches_and_empty_pool_is_no_endpoints() -> None:
    pool = Pool(ep(1))
    pool.scrape()
    fc = controller(pool)
    assert await fc.admit(pool.eps, 0) == (Outcome.DISPATCHED, None)
    assert await fc.admit([], 0) == (Outcome.NO_ENDPOINTS, None)


async def test_saturated_sheddable_is_shed_and_disabled_flow_control_dispatches() -> None:
    pool = Pool(ep(1, waiting=10))
    pool.scrape()
    fc = controller(pool, enabled=False)
    assert (await fc.admit(pool.eps, -1))[0] is Outcome.SHED
    assert (await fc.admit(pool.eps, 0))[0] is Outcome.DISPATCHED


async def test_queued_requests_leave_by_priority_when_capacity_returns() -> None:
    pool = Pool(ep(1, waiting=10))
    pool.scrape()
    fc = controller(pool, default_ttl=5.0)
    order: list[int] = []

    async def one(priority: int) -> None:
        outcome, waited = await fc.admit(pool.eps, priority)
        assert outcome is Outcome.DISPATCHED and waited is not None
        order.append(priority)

    tasks = [asyncio.create_task(one(p)) for p in (0, 5, 1)]
    await eventually(lambda: fc.queued >= 3)
    await asyncio.sleep(0.02)
    assert order == []  # still saturated
    pool.eps[0].metrics.waiting = 0
    for _ in range(3):  # one endpoint with capacity: one release per fresh scrape
        pool.scrape()
        n = len(order)
        await eventually(lambda n=n: len(order) > n)
    await asyncio.gather(*tasks)
    assert order == [5, 1, 0]
    await fc.stop()


async def test_queue_timeout_and_capacity_rejection() -> None:
    pool = Pool(ep(1, waiting=10))
    pool.scrape()
    fc = controller(pool, default_ttl=0.05, bands={0: BandLimits(max_requests=1)})
    first = asyncio.create_task(fc.admit(pool.eps, 0))
    await eventually(lambda: fc.queued >= 1)
    assert (await fc.admit(pool.eps, 0))[0] is Outcome.REJECTED_CAPACITY
    outcome, waited = await first
    assert outcome is Outcome.EVICTED_TTL and waited is not None
    assert fc.queued == 0
    await fc.stop()


async def test_cancelled_waiter_leaves_the_queue_and_empty_pool_releases_all() -> None:
    pool = Pool(ep(1, waiting=10))
    pool.scrape()
    fc = controller(pool)
    t = asyncio.create_task(fc.admit(pool.eps, 0))
    await eventually(lambda: fc.queued >= 1)
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    assert fc.queued == 0
    t2 = asyncio.create_task(fc.admit(pool.eps, 0))
    await eventually(lambda: fc.queued >= 1)
    pool.eps.clear()  # every endpoint left the pool
    assert (await t2)[0] is Outcome.NO_ENDPOINTS
    await fc.stop()


async def test_round_robin_band_alternates_fairness_ids() -> None:
    pool = Pool(ep(1, waiting=10))
    pool.scrape()
    fc = controller(pool, bands={0: BandLimits(round_robin=True)})
    got: list[str] = []

    async def one(fid: str) -> None:
        await fc.admit(pool.eps, 0, fid)
        got.append(fid)

    tasks = [asyncio.create_task(one(f)) for f in ("a", "a", "a", "b")]
    await eventually(lambda: fc.queued >= 4)
    pool.eps[0].metrics.waiting = 0
    while len(got) < 4:
        pool.scrape()
        await asyncio.sleep(0.003)
    await asyncio.gather(*tasks)
    assert got[:2] in (["a", "b"], ["b", "a"])
    await fc.stop()
