"""Helpers of the e2e tests: the stack on a background loop, engine metrics, waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmd.local import LocalStack
from llmd.local.replicas import Replica

T = TypeVar("T")


class RunningStack:
    """A `LocalStack` on a private loop; `call(coro)` runs a coroutine there."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="stack")
        self.thread.start()

    def call(self, coro: Any, timeout: float = 300.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        try:
            self.call(self.stack.stop(), timeout=120)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # ------------------------------------------------------------------ helpers
    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def replicas(self, model: str | None = None) -> list[Replica]:
        reps: list[Replica] = self.call(self.stack.replicas())
        return [r for r in reps if model is None or r.model == model]

    def engine_metrics(self, endpoint: str) -> dict[str, float]:
        """An engine's Prometheus samples as {name{labels}: value} (labels sorted)."""
        text = httpx.get(f"http://{endpoint}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    def metric_sum(self, endpoint: str, name: str) -> float:
        return sum(
            v for k, v in self.engine_metrics(endpoint).items() if k.split("{", 1)[0] == name
        )


def wait_for(cond: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `cond` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
