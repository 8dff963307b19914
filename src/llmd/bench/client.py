"""The load driver: replays a trace open-loop against an OpenAI endpoint, streaming each reply.

Each request is sent at its arrival time (model seconds times the engines' time scale), as a
streamed chat completion with usage; the driver records when the first token and every later
chunk arrived, the usage the engine reported (prompt, cached and output tokens) and the status.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from llmd.bench.workload import ChatTurn


@dataclass(slots=True)
class Result:
    request_id: str
    scheduled_s: float  # real seconds after the run started
    sent_s: float = 0.0
    first_token_s: float | None = None
    end_s: float | None = None
    status: int = 0
    error: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.end_s is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def e2e(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.sent_s

    def itls(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]


async def _one(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    turn: ChatTurn,
    res: Result,
    t0: float,
    headers: dict[str, str],
) -> None:
    body = {
        "model": model,
        "messages": turn.messages,
        "max_tokens": turn.max_tokens,
        "min_tokens": turn.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    res.sent_s = time.perf_counter() - t0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = (await resp.aread()).decode("utf-8", "replace")[:300]
                res.end_s = time.perf_counter() - t0
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                now = time.perf_counter() - t0
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage")
                if usage:
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    res.cached_tokens = int(details.get("cached_tokens") or 0)
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    if res.first_token_s is None:
                        res.first_token_s = now
                    res.chunk_times.append(now)
            res.end_s = time.perf_counter() - t0
    except (httpx.HTTPError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:300]
        res.end_s = time.perf_counter() - t0


async def run_trace(
    base_url: str,
    trace: Sequence[ChatTurn],
    *,
    model: str,
    time_scale: float,
    timeout_s: float = 300.0,
    headers: dict[str, str] | None = None,
) -> tuple[list[Result], float]:
    """Send every turn at its (scaled) arrival time; returns the results and the wall time."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=1024)
    results = [Result(t.request_id, t.arrival_s * time_scale) for t in trace]
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        t0 = time.perf_counter()
        tasks = []
        for turn, res in zip(trace, results, strict=True):
            delay = res.scheduled_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(_one(client, url, model, turn, res, t0, headers or {}))
            )
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return results, wall


async def probe_latency(url: str, model: str, n: int = 20, timeout_s: float = 30.0) -> list[float]:
    """`n` sequential one-token completions: the request path's own cost, in seconds."""
    body = {"model": model, "prompt": "ping", "max_tokens": 1}
    out: list[float] = []
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for _ in range(n + 2):
            t = time.perf_counter()
            resp = await client.post(url.rstrip("/") + "/v1/completions", json=body)
            resp.raise_for_status()
            out.append(time.perf_counter() - t)
    return out[2:]  # the first two warm the connections
