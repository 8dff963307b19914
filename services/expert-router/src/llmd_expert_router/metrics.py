"""Prometheus metrics of the expert-router (one registry per service instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "llmd_expert_router"


class Metrics:
    """The service's collectors, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.load_reports = Counter(
            f"{PREFIX}_load_reports_total", "Load reports accepted.", ["source"], registry=r
        )
        self.load_reports_rejected = Counter(
            f"{PREFIX}_load_reports_rejected_total", "Load reports rejected as invalid.", registry=r
        )
        self.window_tokens = Gauge(
            f"{PREFIX}_window_tokens", "Token assignments in the load window.", registry=r
        )
        self.window_reports = Gauge(
            f"{PREFIX}_window_reports", "Load reports in the load window.", registry=r
        )
        self.imbalance = Gauge(
            f"{PREFIX}_imbalance",
            "Imbalance factor (sum over layers of max rank load / mean rank load) on the load "
            "window at the last rebalance round, for the current plan, the last candidate and a "
            "round-robin layout.",
            ["placement"],
            registry=r,
        )
        self.rebalances = Counter(
            f"{PREFIX}_rebalance_rounds_total",
            "Rebalance rounds by outcome (published, kept, empty).",
            ["outcome"],
            registry=r,
        )
        self.rebalance_seconds = Histogram(
            f"{PREFIX}_rebalance_seconds",
            "Time to compute a candidate placement.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.plan_version = Gauge(
            f"{PREFIX}_plan_version", "Version of the current plan (0: none).", registry=r
        )
        self.moved_slots = Gauge(
            f"{PREFIX}_moved_slots",
            "Slots whose expert changed when the current plan was published.",
            registry=r,
        )
