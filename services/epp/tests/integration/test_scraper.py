"""The metrics scraper against a real HTTP `/metrics`: snapshots follow the engine, consecutive
failures (and only consecutive ones) mark the endpoint unhealthy, a good scrape brings it back,
a failing endpoint is retried on a backoff rather than every interval, and a removed endpoint
stops being scraped."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.extractor import CoreMetricsExtractor
from llmd_epp.datalayer.scraper import MetricsScraper
from llmd_epp.datalayer.source_plugin import MetricsDataSource
from llmd_epp.scheduling.types import Endpoint
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .conftest import free_port, until

pytestmark = pytest.mark.integration

METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.25
"""


class Engine:
    def __init__(self) -> None:
        self.fail = False
        self.waiting = 0
        self.hits = 0

    async def metrics(self, request: Request) -> Response:
        self.hits += 1
        if self.fail:
            return PlainTextResponse("engine overloaded", status_code=500)
        return PlainTextResponse(METRICS.format(running=1, waiting=self.waiting))


async def test_failures_mark_unhealthy_back_off_and_recover() -> None:
    engine = Engine()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/metrics", engine.metrics)]),
            host="127.0.0.1", port=port, log_level="error",
        )
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    store = Datastore()
    key = f"127.0.0.1:{port}"
    store.upsert(Endpoint.at(key))
    interval = 0.02
    scraper = MetricsScraper(
        store,
        MetricsDataSource(refresh_interval=interval),
        CoreMetricsExtractor(),
        failure_threshold=3,
        max_backoff=0.5,
    )
    try:
        await until(lambda: server.started, 20, "metrics server")
        await scraper.start()
        ep = store.get(key)
        assert ep is not None
        engine.waiting = 7
        await until(lambda: ep.metrics.waiting == 7, 10, "first snapshot")
        assert store.healthy(key)

        engine.fail = True
        failures_before = scraper.failures
        await until(lambda: scraper.failures >= failures_before + 2, 10, "two failures")
        assert store.healthy(key), "fewer than failure_threshold failures keep it healthy"
        await until(lambda: not store.healthy(key), 10, "unhealthy after 3 failures")
        assert scraper.failures - failures_before >= 3
        assert key not in {e.key for e in store.candidates()}

        # Backing off: well under one attempt per interval while it keeps failing.
        hits, t0 = engine.hits, asyncio.get_running_loop().time()
        await asyncio.sleep(1.0)
        elapsed = asyncio.get_running_loop().time() - t0
        assert engine.hits - hits < 0.5 * elapsed / interval, (engine.hits - hits, elapsed)

        engine.fail = False
        engine.waiting = 3
        await until(lambda: store.healthy(key) and ep.metrics.waiting == 3, 10, "recovered")
        assert key in {e.key for e in store.candidates()}

        store.remove(key)
        await asyncio.sleep(0)  # the removal listener cancels the loop
        hits = engine.hits
        await asyncio.sleep(20 * interval)
        assert engine.hits - hits <= 1, "a removed endpoint is not scraped"
    finally:
        await scraper.stop()
        server.should_exit = True
        await serving
