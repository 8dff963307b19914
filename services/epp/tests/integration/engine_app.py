"""A tiny vLLM-speaking engine for the EPP's integration tests (until vllm-sim is on main).

Serves `/health`, `/metrics` in vLLM's Prometheus names (the load figures are whatever the test
sets through `POST /admin/load`), `/v1/completions` and `/v1/chat/completions` (JSON or SSE,
with `usage`), and `GET /admin/stats` (requests served, and the
`x-data-parallel-rank` header of each). Run: python engine_app.py --port N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

STATE: dict[str, Any] = {
    "waiting": 0, "running": 0, "kv": 0.0, "served": 0, "delay": 0.0,
    "dp_ranks": [],  # x-data-parallel-rank of each request served, when it had one
}  # fmt: skip
NAME = "engine"

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {kv}
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",num_gpu_blocks="4096"}} 1.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{model}"}} {served}
"""


async def health(_: Request) -> Response:
    return PlainTextResponse("")


async def metrics(_: Request) -> Response:
    return PlainTextResponse(
        METRICS.format(
            model="m",
            running=float(STATE["running"] + STATE["live"]),
            waiting=float(STATE["waiting"]),
            kv=float(STATE["kv"]),
            served=float(STATE["served"]),
        )
    )


async def load(request: Request) -> Response:
    STATE.update(await request.json())
    return JSONResponse(STATE)


async def stats(_: Request) -> Response:
    return JSONResponse({"name": NAME, **STATE})


async def generate(request: Request) -> Response:
    body = await request.json()
    STATE["served"] += 1
    STATE["live"] += 1
    if "x-data-parallel-rank" in request.headers:
        STATE["dp_ranks"].append(request.headers["x-data-parallel-rank"])
    try:
        if STATE["delay"]:
            await asyncio.sleep(STATE["delay"])
        prompt = body.get("prompt") or json.dumps(body.get("messages"))
        usage = {"prompt_tokens": max(1, len(str(prompt)) // 4), "completion_tokens": 3}
        usage["total_tokens"] = usage["prompt_tokens"] + 3
        headers = {"x-served-by": NAME}
        if not body.get("stream"):
            return JSONResponse(
                {"id": "c", "object": "text_completion", "created": int(time.time()),
                 "model": body.get("model"), "choices": [{"index": 0, "text": "ok!"}],
                 "usage": usage},
                headers=headers,
            )  # fmt: skip

        async def events() -> Any:
            for tok in ("o", "k", "!"):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': tok}]})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    finally:
        STATE["live"] -= 1


def main() -> None:
    global NAME
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="engine")
    args = ap.parse_args()
    NAME = args.name
    STATE["live"] = 0
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/admin/load", load, methods=["POST"]),
            Route("/admin/stats", stats),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/chat/completions", generate, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)


if __name__ == "__main__":
    main()
