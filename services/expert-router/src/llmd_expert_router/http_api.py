"""HTTP API of the expert-router (FastAPI).

Routes:
    POST /v1/loads            push a load report ``{"source": str, "counts": [[L][E]]}``
    GET  /v1/loads            the window: reports, sources, tokens (``?full=true``: the counts)
    POST /v1/rebalance        run a round now (``{"force": true}`` publishes regardless of margin)
    GET  /v1/plan             the current plan with its ``phy2log`` and ``logical_count`` tables
    GET  /v1/plans            published plans, newest first (summaries)
    GET  /v1/plans/{version}  one published plan in full
    GET  /v1/topology         the EP group's shape
    GET  /healthz /readyz     liveness; readiness (a plan exists, not shutting down)
    GET  /metrics             Prometheus exposition

Errors are ``{"error": "<field>: <what is wrong>"}`` with status 400/404/422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from llmd_sdk.health import HealthState, add_health_routes
from llmd_sdk.telemetry import add_metrics_route
from pydantic import BaseModel, ConfigDict, Field

from llmd_expert_router.placement import PlacementError
from llmd_expert_router.planner import Plan
from llmd_expert_router.service import ExpertRouterService


class LoadReportIn(BaseModel):
    """Tokens each expert processed since the source's previous report."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field("default", min_length=1, max_length=253)
    counts: list[list[float]]


class RebalanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False


def plan_json(plan: Plan) -> dict[str, Any]:
    return {**plan.summary(), **plan.placement.to_dict()}


def create_app(service: ExpertRouterService) -> FastAPI:
    """The FastAPI app serving ``service``; ``app.state.health`` holds liveness and readiness
    (``health.shutdown()`` on SIGTERM turns both to 503)."""
    app = FastAPI(title="llmd-expert-router", docs_url=None, redoc_url=None)
    health = HealthState(ready=service.current is not None)
    app.state.service = service
    app.state.health = health
    add_health_routes(app, health)
    add_metrics_route(app, service.metrics.registry)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        return JSONResponse(
            {"error": f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}"}, status_code=422
        )

    @app.exception_handler(PlacementError)
    async def _placement_error(_: Request, exc: PlacementError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.post("/v1/loads", status_code=202)
    async def push_load(body: LoadReportIn) -> dict[str, Any]:
        reports = service.report(body.source, body.counts)
        return {"accepted": True, "window_reports": reports}

    @app.get("/v1/loads")
    async def get_loads(full: bool = False) -> dict[str, Any]:
        total = service.window_total()
        out: dict[str, Any] = {
            "window_s": service.window.window_s,
            "reports": len(service.window),
            "sources": service.window.sources(service.clock()),
            "tokens": float(total.sum()),
        }
        if full:
            out["counts"] = total.tolist()
        return out

    @app.post("/v1/rebalance")
    async def rebalance(body: RebalanceIn | None = None) -> dict[str, Any]:
        decision = await service.rebalance(force=body.force if body else False)
        return decision.to_dict()

    @app.get("/v1/plan")
    async def current_plan() -> JSONResponse:
        plan = service.current
        if plan is None:
            return JSONResponse({"error": "plan: none published yet"}, status_code=404)
        return JSONResponse(plan_json(plan))

    @app.get("/v1/plans")
    async def plans() -> dict[str, Any]:
        return {"plans": [p.summary() for p in service.planner.history()]}

    @app.get("/v1/plans/{version}")
    async def plan_by_version(version: int) -> JSONResponse:
        plan = service.planner.get(version)
        if plan is None:
            return JSONResponse(
                {"error": f"version: plan {version} is not in the history"}, status_code=404
            )
        return JSONResponse(plan_json(plan))

    @app.get("/v1/topology")
    async def topology() -> dict[str, Any]:
        return service.topology.to_dict()

    return app
