"""OpenTelemetry tracing and W3C trace-context propagation.

`setup_tracing` installs a tracer provider: with an OTLP/gRPC exporter when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `endpoint`) is set, otherwise one that records spans for
context propagation and log correlation but exports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
_provider: TracerProvider | None = None


def setup_tracing(
    service_name: str,
    *,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install and return a tracer provider for `service_name`.

    `exporter` (tests, custom backends) wins; else an OTLP gRPC exporter when an endpoint is
    configured; else no export.
    """
    global _provider
    # OpenTelemetry lets the global provider be set once per process; later calls (tests,
    # embedded services) add their exporter to it.
    provider = _provider or TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter is None and endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if _provider is None:
        trace.set_tracer_provider(provider)
        _provider = provider
    return provider


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The remote parent carried by a `traceparent` (and `tracestate`) header, if any."""
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in (TRACEPARENT, "tracestate")}
    return _propagator.extract(carrier)


def inject_headers(
    headers: MutableMapping[str, str], context: otel_context.Context | None = None
) -> MutableMapping[str, str]:
    """Add `traceparent`/`tracestate` for the current (or given) span to `headers`."""
    _propagator.inject(headers, context=context)
    return headers


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
