"""Small builders for scheduling tests."""

from __future__ import annotations

from typing import Any

from llmd_epp.scheduling import Endpoint, EndpointMetrics, LLMRequest


def ep(i: int, **metrics: Any) -> Endpoint:
    labels = metrics.pop("labels", {})
    return Endpoint.at(f"10.0.0.{i}:8000", labels=labels, metrics=EndpointMetrics(**metrics))


def req(prompt: str = "", rid: str = "r", **kw: Any) -> LLMRequest:
    kw.setdefault("model", "m")
    kw.setdefault("target_model", kw["model"])
    return LLMRequest(request_id=rid, prompt=prompt, **kw)


async def eventually(cond: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until `cond()` is true, failing after `timeout` seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)
