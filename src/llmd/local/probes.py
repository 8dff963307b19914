"""Readiness probes: an HTTP GET that answers 2xx, or a gRPC health check that says SERVING."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True, slots=True)
class HttpProbe:
    url: str

    async def check(self, client: httpx.AsyncClient) -> str | None:
        """None when ready, else why not (one short phrase)."""
        try:
            resp = await client.get(self.url, timeout=2.0)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    def __str__(self) -> str:
        return f"GET {self.url}"


@dataclass(frozen=True, slots=True)
class GrpcHealthProbe:
    """`grpc.health.v1.Health/Check` of `service` ("readiness", as the EPP and BBR answer)."""

    target: str
    service: str = "readiness"

    async def check(self, client: httpx.AsyncClient) -> str | None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                resp = await stub.Check(
                    health_pb2.HealthCheckRequest(service=self.service), timeout=2.0
                )
            except grpc.aio.AioRpcError as exc:
                return f"gRPC {exc.code().name}"
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def __str__(self) -> str:
        return f"grpc health {self.target} {self.service!r}"
