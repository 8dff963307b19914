"""BBR's Prometheus metrics.

`bbr_success_total`, `bbr_model_not_in_body_total` and `bbr_model_not_parsed_total` keep the
names of gateway-api-inference-extension's BBR so its dashboards read ours; the rest are ours.
In `--workers N` mode the values live in prometheus-client's multiprocess files and the parent
serves their sum (gauges: `livesum`/`livemax`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmd_sdk.telemetry import BYTES_BUCKETS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Parse latency: msgspec reads a 64 KiB body in tens of microseconds.
PARSE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
)  # fmt: skip

OUTCOMES = (
    "routed",  # model found, headers set
    "headers_dropped",  # routed, but STREAMED mode without send_body_without_waiting...
    "passthrough",  # no body (GET /v1/models, health checks): untouched
    "skipped",  # a body BBR does not read (not JSON)
    "no_model",  # a JSON body without model, let through (require_model off)
    "missing_model",  # a JSON body without model, rejected
    "invalid_json",
    "invalid_model",
    "too_large",
    "cancelled",  # the stream ended before a decision
    "error",  # an internal failure (500)
)


# Upstream BBR's counters, as sums of our outcomes.
UPSTREAM_COUNTERS = {
    "bbr_success": (
        "Model name pulled from the body and injected in the request headers.",
        ("routed", "headers_dropped"),
    ),
    "bbr_model_not_in_body": (
        "Request bodies without a model member.",
        ("no_model", "missing_model"),
    ),
    "bbr_model_not_parsed": (
        "Request bodies whose model could not be read (not JSON, not a string).",
        ("invalid_json", "invalid_model"),
    ),
}


class UpstreamCounters(Collector):
    """`bbr_success_total` and friends, computed at scrape time from `bbr_requests_total`
    (one counter to bump per request instead of two)."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        by_outcome: dict[str, float] = {}
        for family in self._source():
            for sample in family.samples:
                if sample.name == "bbr_requests_total":
                    outcome = sample.labels.get("outcome", "")
                    by_outcome[outcome] = by_outcome.get(outcome, 0.0) + sample.value
        for name, (help_text, outcomes) in UPSTREAM_COUNTERS.items():
            yield CounterMetricFamily(
                name, help_text, value=sum(by_outcome.get(o, 0.0) for o in outcomes)
            )

    def describe(self) -> Iterable[Metric]:
        for name, (help_text, _) in UPSTREAM_COUNTERS.items():
            yield CounterMetricFamily(name, help_text)


class BBRMetrics:
    """Per request: one counter and two histogram observations. `active_streams`, when given,
    is read at scrape time; otherwise `bbr_active_streams` is set by `set_active`."""

    def __init__(
        self, registry: CollectorRegistry, active_streams: Callable[[], float] | None = None
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            "bbr_requests",
            "Requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.outcome = {o: self.requests.labels(o) for o in OUTCOMES}
        registry.register(UpstreamCounters(self.requests.collect))
        self.rewrites = Counter(
            "bbr_body_rewrites",
            "Bodies whose model an alias rewrote.",
            registry=registry,
        )
        self.early = Counter(
            "bbr_early_decisions",
            "Streamed requests routed before their body ended (the rest streamed through).",
            registry=registry,
        )
        self.parse_seconds = Histogram(
            "bbr_parse_duration_seconds",
            "Time to read, validate and route one request body.",
            buckets=PARSE_BUCKETS,
            registry=registry,
        )
        self.body_bytes = Histogram(
            "bbr_request_body_bytes",
            "Request body sizes BBR read.",
            buckets=BYTES_BUCKETS,
            registry=registry,
        )
        self.active_streams = Gauge(
            "bbr_active_streams",
            "ext_proc streams open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        if active_streams is not None:
            self.active_streams.set_function(active_streams)
        self.reloads = Counter(
            "bbr_model_config_reloads",
            "Model file loads by result.",
            ["result"],
            registry=registry,
        )
        self.reload_ok = self.reloads.labels("success")
        self.reload_failed = self.reloads.labels("error")
        self.table_entries = Gauge(
            "bbr_model_config_entries",
            "Entries of the model table in use.",
            ["kind"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def record(self, outcome: str) -> None:
        self.outcome[outcome].inc()

    def set_active(self, n: float) -> None:
        self.active_streams.set(n)

    def set_table(self, summary: dict[str, int]) -> None:
        for kind, n in summary.items():
            self.table_entries.labels(kind).set(n)
