"""BBR's Prometheus metrics.

`bbr_success_total`, `bbr_model_not_in_body_total` and `bbr_model_not_parsed_total` keep the
names of gateway-api-inference-extension's BBR so its dashboards read ours; the rest are ours.
In `--workers N` mode the values live in prometheus-client's multiprocess files and the parent
serves their sum (gauges: `livesum`/`livemax`).
"""

from __future__ import annotations

from llmd_sdk.telemetry import BYTES_BUCKETS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class BBRMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "bbr_requests",
            "Requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.outcome = {o: self.requests.labels(o) for o in OUTCOMES}
        self.success = Counter(
            "bbr_success",
            "Model name pulled from the body and injected in the request headers.",
            registry=registry,
        )
        self.not_in_body = Counter(
            "bbr_model_not_in_body",
            "Request bodies without a model member.",
            registry=registry,
        )
        self.not_parsed = Counter(
            "bbr_model_not_parsed",
            "Request bodies whose model could not be read (not JSON, not a string).",
            registry=registry,
        )
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
        if outcome in ("routed", "headers_dropped"):
            self.success.inc()
        elif outcome in ("no_model", "missing_model"):
            self.not_in_body.inc()
        elif outcome in ("invalid_json", "invalid_model"):
            self.not_parsed.inc()

    def set_table(self, summary: dict[str, int]) -> None:
        for kind, n in summary.items():
            self.table_entries.labels(kind).set(n)
