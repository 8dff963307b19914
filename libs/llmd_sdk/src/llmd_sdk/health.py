"""Health of one process, served over gRPC (`grpc.health.v1.Health`) and HTTP.

One `HealthState` holds liveness and readiness; `HealthServicer` serves it as the standard gRPC
health service (Check and Watch) for Envoy health checks and Kubernetes `grpc:` probes, and
`add_health_routes` serves it as `/healthz` and `/readyz` on a FastAPI app.

    state = HealthState(["envoy.service.ext_proc.v3.ExternalProcessor"])
    HealthServicer(state).add_to_server(server)     # a grpc.aio server
    add_health_routes(app, state)                    # a FastAPI app
    state.set_ready()                                # once the service can take traffic
    state.shutdown()                                 # on SIGTERM: NOT_SERVING, for good

gRPC service names, as the Gateway API Inference Extension's endpoint picker answers them:

    "liveness", ""                      SERVING while the process is alive
    "readiness", each service name      SERVING while alive and ready
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "LIVENESS",
    "OVERALL",
    "READINESS",
    "HealthServicer",
    "HealthState",
    "add_health_routes",
]

LIVENESS = "liveness"
READINESS = "readiness"
OVERALL = ""  # the gRPC health protocol's name for the server as a whole

Status = Literal["SERVING", "NOT_SERVING"]
_PROTO_STATUS = {
    "SERVING": health_pb2.HealthCheckResponse.SERVING,
    "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING,
}


class HealthState:
    """Liveness and readiness of this process. Safe to change from any thread; listeners are
    called after every change."""

    def __init__(self, service_names: Iterable[str] = (), *, ready: bool = False) -> None:
        self._service_names = tuple(dict.fromkeys(service_names))
        self._live = True
        self._ready = ready
        self._shutting_down = False
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def service_names(self) -> tuple[str, ...]:
        return self._service_names

    @property
    def live(self) -> bool:
        return self._live and not self._shutting_down

    @property
    def ready(self) -> bool:
        return self._ready and self.live

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def set_ready(self, ready: bool = True) -> None:
        """Start (or stop) taking traffic. Ignored after `shutdown()`."""
        self._change(ready=ready)

    def set_live(self, live: bool) -> None:
        """Report the process as broken (False) so that it gets restarted."""
        self._change(live=live)

    def shutdown(self) -> None:
        """Enter graceful shutdown: every service NOT_SERVING from now on."""
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
        self._notify()

    def status(self, service: str) -> Status | None:
        """The status of a gRPC health service name; None for a name this process does not
        serve."""
        if service in (OVERALL, LIVENESS):
            return "SERVING" if self.live else "NOT_SERVING"
        if service == READINESS or service in self._service_names:
            return "SERVING" if self.ready else "NOT_SERVING"
        return None

    def add_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _change(self, *, ready: bool | None = None, live: bool | None = None) -> None:
        with self._lock:
            if self._shutting_down:
                return
            before = (self._ready, self._live)
            if ready is not None:
                self._ready = ready
            if live is not None:
                self._live = live
            changed = before != (self._ready, self._live)
        if changed:
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped stubs
    """`grpc.health.v1.Health` for a grpc.aio server, answering from a `HealthState`.

    Check on an unknown service name fails with NOT_FOUND; Watch on one streams
    SERVICE_UNKNOWN, as the gRPC health protocol specifies."""

    def __init__(self, state: HealthState) -> None:
        self.state = state
        self._watchers: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        state.add_listener(self._on_change)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def _proto_status(self, service: str) -> Any:
        status = self.state.status(service)
        if status is None:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        return _PROTO_STATUS[status]

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self.state.status(request.service)
        if status is not None:
            return health_pb2.HealthCheckResponse(status=_PROTO_STATUS[status])
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        raise AssertionError("context.abort returned")  # it raises; this keeps types honest

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        self._loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        self._watchers.add(changed)
        try:
            last = None
            while True:
                status = self._proto_status(request.service)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                await changed.wait()
                changed.clear()
        finally:
            self._watchers.discard(changed)

    def _on_change(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:  # changed from another thread (a signal handler thread, a worker)
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for event in self._watchers:
            event.set()


def add_health_routes(
    app: FastAPI,
    state: HealthState,
    *,
    liveness_path: str = "/healthz",
    readiness_path: str = "/readyz",
) -> None:
    """`GET /healthz` (200 while alive) and `GET /readyz` (503 until ready) on a FastAPI app;
    both answer 503 once shutdown has begun. Bodies: {"status": "SERVING" | "NOT_SERVING"}."""
    from fastapi.responses import JSONResponse

    def answer(ok: bool) -> JSONResponse:
        return JSONResponse(
            {"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503
        )

    async def liveness() -> JSONResponse:
        return answer(state.live)

    async def readiness() -> JSONResponse:
        return answer(state.ready)

    app.add_api_route(liveness_path, liveness, methods=["GET"], include_in_schema=False)
    app.add_api_route(readiness_path, readiness, methods=["GET"], include_in_schema=False)
