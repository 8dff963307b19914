"""The HTTP API on port 8090: models and replicas, scale, restart, endpoint list and watch.

`GET /v1/endpoints/watch` streams newline-delimited JSON (`application/x-ndjson`), one event
per line; the format is documented in the README and consumed by the EPP's `modelservice`
endpoint source.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from llmd_sdk.health import add_health_routes
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from llmd_modelservice import __version__
from llmd_modelservice.supervisor import NotFoundError, ScaleError, Supervisor

NDJSON = "application/x-ndjson"


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0)
    role: str | None = Field(default=None, description="prefill to scale the P/D prefill group")


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _field_errors(exc: RequestValidationError) -> str:
    """`replicas: Input should be ...; role: ...`: each field by its name in the request."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(supervisor: Supervisor, *, heartbeat_seconds: float = 15.0) -> FastAPI:
    app = FastAPI(title="llmd-modelservice", version=__version__)
    sup = supervisor

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    # The API's one error shape for bad input too (FastAPI's default is a `detail` list).
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _field_errors(exc))

    @app.exception_handler(ScaleError)
    async def _conflict(_: Request, exc: ScaleError) -> JSONResponse:
        return _error(409, "conflict", str(exc))

    # /healthz while alive; /readyz once every model group has a ready replica.
    add_health_routes(app, sup.health)

    @app.get("/metrics")
    async def metrics() -> Response:
        sup.metrics.watchers.set(sup.registry.watcher_count)
        return Response(generate_latest(sup.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"models": [sup.model_status(name) for name in sup.models]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        return sup.model_status(name)

    @app.post("/v1/models/{name}/scale")
    async def scale(name: str, body: ScaleRequest) -> dict[str, Any]:
        return await sup.scale(name, body.replicas, body.role)

    @app.post("/v1/models/{name}/replicas/{replica_id}/restart", status_code=202)
    async def restart(name: str, replica_id: str) -> dict[str, Any]:
        return await sup.restart_replica(name, replica_id)

    @app.get("/v1/endpoints")
    async def endpoints(model: str | None = None) -> dict[str, Any]:
        return {
            "revision": sup.registry.revision,
            "endpoints": [e.model_dump(mode="json") for e in sup.registry.endpoints(model)],
        }

    @app.get("/v1/endpoints/watch")
    async def watch(
        model: str | None = None,
        since: int | None = Query(default=None, ge=0),
        heartbeat: float | None = Query(default=None, gt=0, le=300),
    ) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            async for event in sup.registry.watch(
                model=model, since=since, heartbeat=heartbeat or heartbeat_seconds
            ):
                yield (json.dumps(event.to_json(), separators=(",", ":")) + "\n").encode()

        return StreamingResponse(lines(), media_type=NDJSON, headers={"Cache-Control": "no-cache"})

    return app
