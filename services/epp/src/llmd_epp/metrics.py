"""The EPP's Prometheus metrics, named as upstream EPP names them where a counterpart exists
(`inference_objective_*`, `inference_pool_*`, `inference_extension_*`), plus llm-d's
`llm_d_epp_*` / `llm_d_inference_scheduler_*` ones."""

from __future__ import annotations

from llmd_sdk.telemetry import new_registry
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OBJECTIVE_LABELS = ("model_name", "target_model_name")
SCHED_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
REQUEST_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20,
    30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip
SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))
TOKEN_BUCKETS = tuple(float(b) for b in (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
    8192, 16384, 32778, 65536, 131072, 262144, 524288, 1048576))  # fmt: skip
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0)  # fmt: skip
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HIT_BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class EPPMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or new_registry()
        self.requests = Counter(
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            OBJECTIVE_LABELS, registry=r,
        )  # fmt: skip
        self.request_errors = Counter(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            (*OBJECTIVE_LABELS, "error_code"), registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Inference objective response latency distribution in seconds.",
            OBJECTIVE_LABELS, buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Inference objective requests size distribution in bytes.",
            OBJECTIVE_LABELS, buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            "Inference objective responses size distribution in bytes.",
            OBJECTIVE_LABELS, buckets=SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution.",
            OBJECTIVE_LABELS, buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution.",
            OBJECTIVE_LABELS, buckets=TOKEN_BUCKETS[:12], registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "inference_objective_running_requests",
            "Inference objective number of running requests in each model.",
            ("model_name",), registry=r,
        )  # fmt: skip
        self.ntpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Inference objective latency divided by number of output tokens in seconds.",
            OBJECTIVE_LABELS, buckets=NTPOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.pool_kv = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool.",
            ("name",), registry=r,
        )  # fmt: skip
        self.pool_queue = Gauge(
            "inference_pool_average_queue_size",
            "The average number of requests pending in the model server queue.",
            ("name",), registry=r,
        )  # fmt: skip
        self.pool_running = Gauge(
            "inference_pool_average_running_requests",
            "The average number of requests running in the model servers.",
            ("name",), registry=r,
        )  # fmt: skip
        self.pool_ready = Gauge(
            "inference_pool_ready_pods",
            "The number of ready endpoints in the inference server pool.",
            ("name",), registry=r,
        )  # fmt: skip
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "End-to-end scheduling latency distribution in seconds.",
            buckets=SCHED_BUCKETS, registry=r,
        )  # fmt: skip
        self.plugin_duration = Histogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
            ("extension_point", "plugin_type", "plugin_name"), buckets=SCHED_BUCKETS, registry=r,
        )  # fmt: skip
        self.prefix_size = Gauge(
            "inference_extension_prefix_indexer_size",
            "Size of the prefix indexer.", registry=r,
        )  # fmt: skip
        self.prefix_hit_ratio = Histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            "Ratio of prefix length matched to total prefix length in the cache lookup.",
            buckets=RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.prefix_hit_bytes = Histogram(
            "inference_extension_prefix_indexer_hit_bytes",
            "Length of the prefix match in number of bytes in the cache lookup.",
            buckets=HIT_BYTES_BUCKETS, registry=r,
        )  # fmt: skip
        self.info = Gauge(
            "inference_extension_info",
            "General information of the current build of Inference Extension.",
            ("commit", "build_ref"), registry=r,
        )  # fmt: skip
        self.fc_queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Current number of requests being actively managed by the EPP flow control layer.",
            ("fairness_id", "priority", "inference_pool"), registry=r,
        )  # fmt: skip
        self.fc_queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Distribution of the total time requests spend in the EPP flow control layer.",
            ("fairness_id", "priority", "outcome", "inference_pool", *OBJECTIVE_LABELS),
            buckets=QUEUE_BUCKETS, registry=r,
        )  # fmt: skip
        self.outcomes = Counter(
            "llm_d_epp_request_outcomes_total",
            "Requests by how they ended: picked, shed (429), rejected (429, queue full), "
            "unavailable (503), timeout (503 after queueing), bad_request (400), error (500).",
            ("outcome",), registry=r,
        )  # fmt: skip
        self.pd_decisions = Counter(
            "llm_d_inference_scheduler_pd_decision_total",
            "P/D disaggregation decisions.", ("decision_type",), registry=r,
        )  # fmt: skip
        self.extract_errors = Counter(
            "llm_d_epp_datalayer_extract_errors_total",
            "Failed endpoint metrics scrapes.", ("extractor_type",), registry=r,
        )  # fmt: skip
        self.endpoint_score = Gauge(
            "llm_d_epp_endpoint_score",
            "Weighted score of each endpoint in the last decision of each profile (debug).",
            ("profile", "endpoint"), registry=r,
        )  # fmt: skip
        self.endpoint_in_flight = Gauge(
            "llm_d_epp_endpoint_in_flight_requests",
            "Requests this EPP routed to each endpoint that have not completed.",
            ("endpoint",), registry=r,
        )  # fmt: skip
        self.kvindex_errors = Counter(
            "llm_d_epp_kvindex_errors_total",
            "Failed or timed-out kvmanager Score calls (the request was scored without them).",
            registry=r,
        )  # fmt: skip
