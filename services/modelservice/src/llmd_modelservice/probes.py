"""HTTP probes of an engine: `/health` and the in-flight count from `/metrics`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Gauges whose sum is the number of requests an engine still holds.
IN_FLIGHT_METRICS = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sim": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    seconds: float


async def probe_health(
    client: httpx.AsyncClient, base_url: str, path: str, timeout_s: float
) -> ProbeResult:
    start = time.perf_counter()
    try:
        resp = await client.get(f"{base_url}{path}", timeout=timeout_s)
    except httpx.TimeoutException:
        return ProbeResult(False, f"GET {path} timed out after {timeout_s:g}s", timeout_s)
    except httpx.HTTPError as exc:
        return ProbeResult(
            False, f"GET {path} failed: {type(exc).__name__}", time.perf_counter() - start
        )
    seconds = time.perf_counter() - start
    if resp.status_code == 200:
        return ProbeResult(True, "200", seconds)
    return ProbeResult(False, f"GET {path} returned {resp.status_code}", seconds)


def parse_in_flight(text: str, engine: str) -> int:
    names = IN_FLIGHT_METRICS.get(engine, IN_FLIGHT_METRICS["vllm"])
    total = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                total += sample.value
                seen = True
    if not seen:
        raise ValueError(f"no {' / '.join(names)} in metrics")
    return int(total)


async def in_flight(
    client: httpx.AsyncClient, base_url: str, path: str, engine: str, timeout_s: float
) -> int | None:
    """Requests running plus waiting; None when the engine cannot say."""
    try:
        resp = await client.get(f"{base_url}{path}", timeout=timeout_s)
        resp.raise_for_status()
        return parse_in_flight(resp.text, engine)
    except (httpx.HTTPError, ValueError):
        return None
