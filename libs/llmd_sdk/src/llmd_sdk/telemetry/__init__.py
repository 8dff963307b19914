"""Telemetry: structlog logging, Prometheus metrics and OpenTelemetry tracing, set up the same
way in every service."""

from llmd_sdk.telemetry.logging import (
    bind_request_context,
    clear_request_context,
    configure_logging,
    get_logger,
    unbind_request_context,
)
from llmd_sdk.telemetry.metrics import (
    BYTES_BUCKETS,
    FAST_LATENCY_BUCKETS,
    MetricsServer,
    add_metrics_route,
    exposition,
    new_registry,
    start_metrics_server,
)
from llmd_sdk.telemetry.tracing import (
    TRACEPARENT,
    current_trace_id,
    extract_context,
    get_tracer,
    inject_headers,
    setup_tracing,
)

__all__ = [
    "BYTES_BUCKETS",
    "FAST_LATENCY_BUCKETS",
    "TRACEPARENT",
    "MetricsServer",
    "add_metrics_route",
    "bind_request_context",
    "clear_request_context",
    "configure_logging",
    "current_trace_id",
    "exposition",
    "extract_context",
    "get_logger",
    "get_tracer",
    "inject_headers",
    "new_registry",
    "setup_tracing",
    "start_metrics_server",
    "unbind_request_context",
]
