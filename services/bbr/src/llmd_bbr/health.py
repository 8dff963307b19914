"""gRPC health for BBR: `liveness`, `readiness`, the ext_proc service name, and "" (overall)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
LIVENESS = "liveness"
READINESS = "readiness"
# Answer these while serving; liveness stays SERVING through a graceful shutdown.
SERVING_SERVICES = ("", READINESS, EXT_PROC_SERVICE)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """One health servicer; register it on every gRPC server that should answer checks."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.serving = False

    def register(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, _SERVING)
        await self.set_serving(False)

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = _SERVING if serving else _NOT_SERVING
        for name in SERVING_SERVICES:
            await self.servicer.set(name, status)
