"""kvmanager's Prometheus metrics, and the ingest observer that feeds them."""

from __future__ import annotations

import time

from llmd_sdk.kvcache.applier import PublisherKey
from llmd_sdk.kvcache.events import KVEventBatch
from llmd_sdk.kvcache.index.base import IndexOp, IndexStats, RemoveBlocks, StoreBlocks
from llmd_sdk.telemetry import FAST_LATENCY_BUCKETS, new_registry
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric of the service, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or new_registry()
        self.events = Counter(
            "kvmanager_events_total", "KV events applied, by type.", ["type"], registry=r
        )
        self.blocks = Counter(
            "kvmanager_blocks_total", "Block hashes in applied events, by operation.", ["op"],
            registry=r,
        )  # fmt: skip
        self.batches = Counter("kvmanager_batches_total", "Event batches applied.", registry=r)
        self.lag = Histogram(
            "kvmanager_ingest_lag_seconds",
            "From the engine's batch timestamp to the batch being applied to the index.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.malformed = Counter(
            "kvmanager_malformed_messages_total", "Messages skipped as malformed, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.dropped = Counter(
            "kvmanager_dropped_messages_total",
            "Messages dropped before decoding (queue_full, not_in_pool).",
            ["reason"],
            registry=r,
        )
        self.gaps = Counter(
            "kvmanager_sequence_gaps_total", "Sequence gaps seen, by whether replay filled them.",
            ["replayed"], registry=r,
        )  # fmt: skip
        self.resyncs = Counter(
            "kvmanager_resyncs_total", "Engines whose entries were dropped, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.index_keys = Gauge("kvmanager_index_keys", "Distinct (model, block) keys.", registry=r)
        self.index_entries = Gauge(
            "kvmanager_index_entries", "(block, endpoint, medium, rank) entries.", registry=r
        )
        self.index_evictions = Gauge(
            "kvmanager_index_evictions", "Blocks evicted for capacity (in-memory).", registry=r
        )
        self.engines = Gauge("kvmanager_engines", "Engines in the pool (configured).", registry=r)
        self.publishers = Gauge(
            "kvmanager_publishers", "Publishers (endpoint, model) seen.", registry=r
        )
        self.score_latency = Histogram(
            "kvmanager_score_duration_seconds",
            "Score request latency, by input kind (token_ids, prompt, chat).",
            ["input"],
            buckets=FAST_LATENCY_BUCKETS,
            registry=r,
        )
        self.score_errors = Counter(
            "kvmanager_score_errors_total", "Score requests refused, by gRPC code.", ["code"],
            registry=r,
        )  # fmt: skip

    def set_index(self, stats: IndexStats) -> None:
        self.index_keys.set(stats.keys)
        self.index_entries.set(stats.entries)
        self.index_evictions.set(stats.evictions)


class MetricsObserver:
    """`llmd_sdk.kvcache.subscriber.IngestObserver` backed by `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._stored = metrics.blocks.labels("stored")
        self._removed = metrics.blocks.labels("removed")
        self._by_type: dict[str, Counter] = {}

    def batch(self, key: PublisherKey, batch: KVEventBatch, ops: list[IndexOp]) -> None:
        m = self.m
        m.batches.inc()
        if batch.ts > 0:
            m.lag.observe(max(0.0, time.time() - batch.ts))
        stored = removed = 0
        for op in ops:
            if type(op) is StoreBlocks:
                stored += len(op.keys)
            elif type(op) is RemoveBlocks:
                removed += len(op.keys)
        if stored:
            self._stored.inc(stored)
        if removed:
            self._removed.inc(removed)
        for ev in batch.events:
            name = type(ev).__name__
            c = self._by_type.get(name)
            if c is None:
                c = self._by_type[name] = m.events.labels(name)
            c.inc()

    def malformed(self, reason: str) -> None:
        self.m.malformed.labels(reason).inc()

    def dropped(self, reason: str) -> None:
        self.m.dropped.labels(reason).inc()

    def gap(self, key: PublisherKey, missing: int, replayed: bool) -> None:
        self.m.gaps.labels("true" if replayed else "false").inc()

    def resync(self, key: PublisherKey, reason: str) -> None:
        self.m.resyncs.labels(reason).inc()
