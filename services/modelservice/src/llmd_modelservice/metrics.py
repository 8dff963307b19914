"""Prometheus metrics of the supervisor, on a registry of its own (one per supervisor)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "llmd_modelservice"


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.replicas = Gauge(
            f"{PREFIX}_replicas",
            "Replicas by state.",
            ["model", "role", "state"],
            registry=r,
        )
        self.desired = Gauge(
            f"{PREFIX}_desired_replicas", "Desired replicas.", ["model", "role"], registry=r
        )
        self.starts = Counter(
            f"{PREFIX}_replica_starts_total", "Engine processes started.", ["model"], registry=r
        )
        self.restarts = Counter(
            f"{PREFIX}_replica_restarts_total",
            "Restarts after a crash or failed health checks.",
            ["model", "reason"],
            registry=r,
        )
        self.given_up = Counter(
            f"{PREFIX}_replica_given_up_total",
            "Replicas given up on after too many failures in the window.",
            ["model"],
            registry=r,
        )
        self.health_failures = Counter(
            f"{PREFIX}_health_check_failures_total",
            "Failed health probes.",
            ["model"],
            registry=r,
        )
        self.health_latency = Histogram(
            f"{PREFIX}_health_check_duration_seconds",
            "Health probe latency.",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.drain_seconds = Histogram(
            f"{PREFIX}_drain_duration_seconds",
            "Time from draining to process exit on planned stops.",
            ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.endpoint_events = Counter(
            f"{PREFIX}_endpoint_events_total",
            "Registry changes by type.",
            ["type"],
            registry=r,
        )
        self.watchers = Gauge(f"{PREFIX}_watchers", "Open endpoint watch streams.", registry=r)


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            f"{PREFIX}_reconciles_total",
            "ModelService reconciles by result (applied, apply_failed, invalid_spec).",
            ["result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time to render, apply, prune and write status for one ModelService.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.relists = Counter(
            f"{PREFIX}_relists_total", "Full list-and-reconcile passes.", registry=self.registry
        )
