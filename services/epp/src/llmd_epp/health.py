"""gRPC health on its own port: `liveness`, `readiness`, the ext_proc service name and ""."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from llmd_sdk.contracts import EXT_PROC_SERVICE

LIVENESS = "liveness"
READINESS = "readiness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EPPHealth:
    """Liveness is SERVING while the process runs; readiness (and the ext_proc service) once
    the configuration is loaded and the endpoint source has delivered its first view."""

    def __init__(self) -> None:
        self.servicer: Any = health.aio.HealthServicer()
        self.ready = False

    def register(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        await self._set_ready(False)

    async def _set_ready(self, ready: bool) -> None:
        status = SERVING if ready else NOT_SERVING
        for service in (READINESS, EXT_PROC_SERVICE, ""):
            await self.servicer.set(service, status)
        self.ready = ready

    async def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            await self._set_ready(ready)

    async def shutting_down(self) -> None:
        await self._set_ready(False)
        await self.servicer.set(LIVENESS, NOT_SERVING)
