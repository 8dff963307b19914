"""Spans reach a real OTLP/gRPC collector when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The exporting side runs in a child process: OpenTelemetry's tracer provider is global and set
once per process, and a test must not leave an exporter pointed at a closed port behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

CHILD = """
from llmd_sdk.telemetry import get_tracer, setup_tracing
provider = setup_tracing("llmd-test-svc")
with get_tracer("t").start_as_current_span("bbr.route") as span:
    span.set_attribute("model", "m")
assert provider.force_flush(10_000), "flush timed out"
provider.shutdown()
"""


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.got = threading.Event()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.mark.integration
def test_spans_are_exported_over_otlp_grpc_when_the_endpoint_is_set() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        res = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        assert collector.got.wait(10), "no export reached the collector"
    finally:
        server.stop(0)
    spans = [
        (span, rs.resource)
        for req in collector.requests
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert [s.name for s, _ in spans] == ["bbr.route"]
    (span, resource), *_ = spans
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs["service.name"] == "llmd-test-svc"
    assert {a.key: a.value.string_value for a in span.attributes} == {"model": "m"}
