"""HTTP on port 9011: health, readiness, Prometheus metrics, and pool membership.

- ``GET /healthz``, ``GET /readyz`` (`llmd_sdk.health`): alive; ready once ingestion runs and
  while the index backend answers (checked every few seconds), else 503.
- ``GET /metrics``: Prometheus text exposition (index gauges refreshed per scrape).
- ``GET /engines``: configured engines and every publisher seen, with their counters.
- ``POST /engines``: add an engine (JSON `EngineConfig`); ``DELETE /engines/{endpoint}``: it
  left the pool, purge it. modelservice (or an operator) keeps the pool current with these.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from llmd_sdk.health import add_health_routes
from llmd_sdk.telemetry import exposition

from llmd_kvmanager import __version__
from llmd_kvmanager.config import EngineConfig
from llmd_kvmanager.manager import KVManager


def create_app(manager: KVManager) -> FastAPI:
    app = FastAPI(title="llmd-kvmanager", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
            lines.append(f"{loc}: {str(e['msg']).removeprefix('Value error, ')}")
        return JSONResponse({"error": "; ".join(lines)}, status_code=400)

    add_health_routes(app, manager.health)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Keep serving the counters while the backend is down.
        with contextlib.suppress(Exception):
            await manager.refresh_gauges()
        body, ctype = exposition(manager.metrics.registry)
        return Response(content=body, media_type=ctype)

    @app.get("/engines")
    async def engines() -> dict[str, Any]:
        return {
            "configured": [
                {
                    "endpoint": e.endpoint,
                    "zmq": e.address,
                    "model": e.model,
                    "replay": e.replay_address,
                }
                for e in manager.subscriber.engines
            ],
            "publishers": [
                {
                    "endpoint": e.endpoint,
                    "model": e.model,
                    "blocks": e.blocks,
                    "last_sequence": e.last_sequence,
                    "events": e.events,
                    "resyncs": e.resyncs,
                }
                for e in await manager.engine_stats()
            ],
        }

    @app.post("/engines", status_code=201)
    async def add_engine(engine: EngineConfig) -> dict[str, str]:
        await manager.add_engine(engine)
        return {"status": "added", "endpoint": engine.endpoint}

    @app.delete("/engines/{endpoint}")
    async def remove_engine(endpoint: str) -> dict[str, str]:
        if not await manager.remove_engine(endpoint):
            raise HTTPException(404, f"endpoint: {endpoint} is not a known engine")
        return {"status": "removed", "endpoint": endpoint}

    @app.post("/engines/{endpoint}/admit")
    async def admit(endpoint: str) -> dict[str, str]:
        manager.admit(endpoint)
        return {"status": "admitted", "endpoint": endpoint}

    return app
