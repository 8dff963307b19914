"""Prometheus: a registry per service and its exposition, standalone or inside FastAPI."""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import start_http_server

# Latency buckets for sub-millisecond to multi-second decisions (seconds).
FAST_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BYTES_BUCKETS = tuple(float(2**i) for i in range(6, 25, 2))  # 64 B .. 16 MiB


def new_registry() -> CollectorRegistry:
    """A registry of one service's own metrics (no process/platform collectors doubling up)."""
    return CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """`/metrics` on its own port, served from a daemon thread (prometheus-client's server)."""

    def __init__(self, port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> None:
        server, thread = start_http_server(port, addr=addr, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int, registry: CollectorRegistry, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve `registry` on `addr:port` (port 0 picks a free one: read `.port`)."""
    return MetricsServer(port, registry, addr)


def add_metrics_route(app: Any, registry: CollectorRegistry, path: str = "/metrics") -> None:
    """Add `GET /metrics` for `registry` to a FastAPI/Starlette app."""
    from starlette.responses import Response

    async def metrics() -> Response:
        body, ctype = exposition(registry)
        return Response(content=body, media_type=ctype)

    app.add_api_route(path, metrics, methods=["GET"], include_in_schema=False)
