from __future__ import annotations

import io
import json
import logging
import sys

import httpx
import pytest
import structlog
from llmd_sdk.telemetry import (
    bind_request_context,
    clear_request_context,
    configure_logging,
    current_trace_id,
    extract_context,
    get_logger,
    get_tracer,
    inject_headers,
    new_registry,
    setup_tracing,
    start_metrics_server,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import Counter

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_logs_are_json_lines_with_context_and_trace_ids() -> None:
    buf = io.StringIO()
    configure_logging("svc", stream=buf)
    provider = setup_tracing("svc", exporter=InMemorySpanExporter())
    try:
        with get_tracer("t").start_as_current_span(
            "op", context=extract_context({"traceparent": PARENT})
        ):
            bind_request_context(request_id="req-1", model=None)
            get_logger("mod").info("picked", endpoint="10.0.0.1:8000")
            logging.getLogger("stdlib").warning("from %s", "stdlib")
    finally:
        clear_request_context()
        provider.force_flush()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["picked", "from stdlib"]
    for e in lines:
        assert e["service"] == "svc"
        assert e["request_id"] == "req-1"
        assert "model" not in e
        assert e["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert lines[0]["endpoint"] == "10.0.0.1:8000" and lines[0]["level"] == "info"


def test_level_filters_and_bad_level_is_rejected() -> None:
    buf = io.StringIO()
    configure_logging("svc", level="WARNING", stream=buf)
    get_logger().info("quiet")
    get_logger().error("loud")
    assert [json.loads(x)["event"] for x in buf.getvalue().splitlines()] == ["loud"]
    try:
        configure_logging("svc", level="CHATTY", stream=buf)
    except ValueError as exc:
        assert "CHATTY" in str(exc)
    else:
        raise AssertionError("bad level accepted")


def test_traceparent_round_trips_through_headers() -> None:
    exporter = InMemorySpanExporter()
    provider = setup_tracing("svc", exporter=exporter)
    try:
        parent = extract_context({"TraceParent": PARENT})
        with get_tracer("t").start_as_current_span("child", context=parent):
            headers = inject_headers({})
            assert current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    finally:
        provider.force_flush()
    assert headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert current_trace_id() is None


def test_metrics_server_exposes_its_registry() -> None:
    registry = new_registry()
    Counter("llmd_test_things", "things", registry=registry).inc(3)
    server = start_metrics_server(0, registry, addr="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    assert "llmd_test_things_total 3.0" in text
    assert "python_gc" not in text  # only the service's own registry


def test_a_logger_made_before_configuration_logs_as_configured() -> None:
    # Services create module-level loggers at import, before main() configures logging.
    structlog.reset_defaults()
    early = get_logger("llmd_sim.server", component="engine")
    buf = io.StringIO()
    configure_logging("svc", level="WARNING", stream=buf)
    early.info("filtered out by the level")
    early.warning("ready", port=8000)
    (line,) = buf.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "ready" and event["service"] == "svc"
    assert event["logger"] == "llmd_sim.server" and event["component"] == "engine"
    assert event["port"] == 8000 and event["level"] == "warning"


def test_logging_follows_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure_logging without a stream must not hold on to the stderr of that moment: a test
    # runner's capture file is closed later, and every log call after it raised ValueError.
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("svc", "INFO")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("x").info("after the swap")
    logging.getLogger("stdlib").warning("from the standard library")
    lines = [json.loads(line) for line in second.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["after the swap", "from the standard library"]
