"""vLLM's Prometheus metrics: same names, labels, types and histogram buckets.

Names and buckets follow vLLM's ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``): every
engine metric carries ``model_name`` (the first served name) and ``engine`` (the data-parallel
rank); ``vllm:request_success`` adds ``finished_reason``; ``vllm:lora_requests_info`` carries
``max_lora``, ``waiting_lora_adapters`` and ``running_lora_adapters`` and is set to the current
time, as vLLM does.

The values live in plain Python numbers updated once per engine step (a histogram can take the
same observation n times in one call, which a decode step needs) and are turned into metric
families only when ``/metrics`` is scraped. The sim serves `VllmMetrics.render`, which writes the
same bytes as prometheus-client's ``generate_latest`` from precomputed line prefixes: an EPP
scrapes every engine every 50 ms, and the generic path cost ~4-6 ms of CPU per scrape.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to `max_value`."""
    out: list[int] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


class Histogram:
    """Bucket counts and a sum; `observe(value, n)` records `value` n times."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = [float(b) for b in bounds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((_fmt(bound), float(acc)))
        acc += self.counts[-1]
        out.append(("+Inf", float(acc)))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def _fmt(v: float) -> str:
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]


def _label_value(v: str) -> str:
    """A label value escaped as the text format requires."""
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    """``{k="v",...}`` in sorted label order, as prometheus-client writes it."""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(pairs.items())) + "}"


def _header(name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class EngineStats:
    """One engine core's metric values."""

    __slots__ = (
        "decode_time",
        "e2e",
        "external_prefix_hits",
        "external_prefix_queries",
        "generation_tokens",
        "inference_time",
        "iteration_tokens",
        "itl",
        "kv_cache_usage",
        "max_tokens_param",
        "n_param",
        "num_preemptions",
        "num_running",
        "num_waiting",
        "prefill_time",
        "prefix_hits",
        "prefix_queries",
        "prompt_tokens",
        "queue_time",
        "request_generation_tokens",
        "request_max_generation_tokens",
        "request_prompt_tokens",
        "request_success",
        "time_per_output_token",
        "ttft",
    )

    def __init__(self, max_model_len: int) -> None:
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.num_running = 0
        self.num_waiting = 0
        self.kv_cache_usage = 0.0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.external_prefix_queries = 0
        self.external_prefix_hits = 0
        self.num_preemptions = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.request_success = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.time_per_output_token = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.inference_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.prefill_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.decode_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_prompt_tokens = Histogram(token_buckets)
        self.request_generation_tokens = Histogram(token_buckets)
        self.request_max_generation_tokens = Histogram(token_buckets)
        self.max_tokens_param = Histogram(token_buckets)
        self.n_param = Histogram((1, 2, 5, 10, 20))
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)


_HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", "ttft", "Histogram of time to first token in seconds."),
    (
        "vllm:inter_token_latency_seconds",
        "itl",
        "Histogram of inter-token latency in seconds.",
    ),
    (
        "vllm:request_time_per_output_token_seconds",
        "time_per_output_token",
        "Histogram of time_per_output_token_seconds per request.",
    ),
    ("vllm:e2e_request_latency_seconds", "e2e", "Histogram of e2e request latency in seconds."),
    (
        "vllm:request_queue_time_seconds",
        "queue_time",
        "Histogram of time spent in WAITING phase for request.",
    ),
    (
        "vllm:request_inference_time_seconds",
        "inference_time",
        "Histogram of time spent in RUNNING phase for request.",
    ),
    (
        "vllm:request_prefill_time_seconds",
        "prefill_time",
        "Histogram of time spent in PREFILL phase for request.",
    ),
    (
        "vllm:request_decode_time_seconds",
        "decode_time",
        "Histogram of time spent in DECODE phase for request.",
    ),
    ("vllm:request_prompt_tokens", "request_prompt_tokens", "Number of prefill tokens processed."),
    (
        "vllm:request_generation_tokens",
        "request_generation_tokens",
        "Number of generation tokens processed.",
    ),
    (
        "vllm:request_max_num_generation_tokens",
        "request_max_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
    ),
    (
        "vllm:request_params_max_tokens",
        "max_tokens_param",
        "Histogram of the max_tokens request parameter.",
    ),
    ("vllm:request_params_n", "n_param", "Histogram of the n request parameter."),
    (
        "vllm:iteration_tokens_total",
        "iteration_tokens",
        "Histogram of number of tokens per engine_step.",
    ),
)

_GAUGES = (
    ("vllm:num_requests_running", "num_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "num_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "kv_cache_usage", "KV-cache usage. 1 means 100 percent usage."),
)
_SUCCESS_DOC = "Count of successfully processed requests."
_CACHE_INFO_DOC = "Information of the LLMEngine CacheConfig"
_LORA_DOC = "Running stats on lora requests."

_COUNTERS = (
    (
        "vllm:prefix_cache_queries",
        "prefix_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    (
        "vllm:prefix_cache_hits",
        "prefix_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
    (
        "vllm:external_prefix_cache_queries",
        "external_prefix_queries",
        "External prefix cache queries from KV connector cross-instance cache sharing, "
        "in terms of number of queried tokens.",
    ),
    (
        "vllm:external_prefix_cache_hits",
        "external_prefix_hits",
        "External prefix cache hits from KV connector cross-instance cache sharing, "
        "in terms of number of cached tokens.",
    ),
    ("vllm:num_preemptions", "num_preemptions", "Cumulative number of preemption from the engine."),
    ("vllm:prompt_tokens", "prompt_tokens", "Number of prefill tokens processed."),
    ("vllm:generation_tokens", "generation_tokens", "Number of generation tokens processed."),
)


class LoRAInfo:
    """What `vllm:lora_requests_info` reports (None when LoRA is off)."""

    __slots__ = ("max_lora", "running", "updated", "waiting")

    def __init__(self, max_lora: int) -> None:
        self.max_lora = max_lora
        self.running = ""
        self.waiting = ""
        self.updated = time.time()


class VllmMetrics(Collector):
    """All engines' metrics, exported under vLLM's names."""

    def __init__(
        self,
        model_name: str,
        num_engines: int,
        max_model_len: int,
        *,
        cache_config: dict[str, str] | None = None,
        max_loras: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.engines = [EngineStats(max_model_len) for _ in range(num_engines)]
        self.cache_config = cache_config or {}
        self.lora = LoRAInfo(max_loras) if max_loras is not None else None
        self._prefixes = self._build_prefixes()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def _build_prefixes(self) -> list[Any]:
        """Per metric and engine, the text before each value (names, model, engine count and
        bucket bounds never change after construction)."""
        m = self.model_name
        out: list[Any] = []
        for name, attr, doc in _GAUGES:
            out.append(("gauge", attr, _header(name, doc, "gauge"), [
                f"{name}{_labels({'model_name': m, 'engine': str(i)})} "
                for i in range(len(self.engines))
            ]))  # fmt: skip
        for name, attr, doc in _COUNTERS:
            total = name + "_total"
            out.append(("counter", attr, _header(total, doc, "counter"), [
                f"{total}{_labels({'model_name': m, 'engine': str(i)})} "
                for i in range(len(self.engines))
            ]))  # fmt: skip
        total = "vllm:request_success_total"
        out.append(("success", "request_success", _header(total, _SUCCESS_DOC, "counter"), [
            {r: f"{total}{_labels({'model_name': m, 'engine': str(i), 'finished_reason': r})} "
             for r in FINISH_REASONS}
            for i in range(len(self.engines))
        ]))  # fmt: skip
        for name, attr, doc in _HISTOGRAMS:
            per_engine = []
            for i, stats in enumerate(self.engines):
                base = {"model_name": m, "engine": str(i)}
                hist: Histogram = getattr(stats, attr)
                bounds = [_fmt(b) for b in hist.bounds] + ["+Inf"]
                buckets = [f"{name}_bucket{_labels({**base, 'le': b})} " for b in bounds]
                per_engine.append(
                    (buckets, f"{name}_count{_labels(base)} ", f"{name}_sum{_labels(base)} ")
                )
            out.append(("histogram", attr, _header(name, doc, "histogram"), per_engine))
        if self.cache_config:
            name = "vllm:cache_config_info"
            lines = "".join(
                f"{name}{_labels({**self.cache_config, 'engine': str(i)})} 1.0\n"
                for i in range(len(self.engines))
            )
            out.append(("static", "", _header(name, _CACHE_INFO_DOC, "gauge") + lines, None))
        return out

    def render(self) -> bytes:
        """The text exposition, byte for byte what ``generate_latest`` makes of `collect`."""
        parts: list[str] = []
        add = parts.append
        fmt = floatToGoString
        engines = self.engines
        for kind, attr, header, per_engine in self._prefixes:
            add(header)
            if kind == "static":
                continue
            if kind == "histogram":
                for stats, (buckets, count, total) in zip(engines, per_engine, strict=True):
                    hist = getattr(stats, attr)
                    acc = 0
                    for prefix, c in zip(buckets, hist.counts, strict=True):
                        acc += c
                        add(prefix + fmt(float(acc)) + "\n")
                    add(count + fmt(float(acc)) + "\n")
                    add(total + fmt(hist.sum) + "\n")
            elif kind == "success":
                for stats, prefixes in zip(engines, per_engine, strict=True):
                    for reason, n in stats.request_success.items():
                        add(prefixes[reason] + fmt(float(n)) + "\n")
            else:
                for stats, prefix in zip(engines, per_engine, strict=True):
                    add(prefix + fmt(float(getattr(stats, attr))) + "\n")
        if self.lora is not None:
            name = "vllm:lora_requests_info"
            lb = {
                "max_lora": str(self.lora.max_lora),
                "waiting_lora_adapters": self.lora.waiting,
                "running_lora_adapters": self.lora.running,
            }
            add(_header(name, _LORA_DOC, "gauge"))
            add(f"{name}{_labels(lb)} {fmt(self.lora.updated)}\n")
        return "".join(parts).encode()

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        engines = [(str(i), s) for i, s in enumerate(self.engines)]
        m = self.model_name
        for name, attr, doc in _GAUGES:
            g = GaugeMetricFamily(name, doc, labels=labels)
            for idx, s in engines:
                g.add_metric([m, idx], float(getattr(s, attr)))
            yield g
        for name, attr, doc in _COUNTERS:
            c = CounterMetricFamily(name, doc, labels=labels)
            for idx, s in engines:
                c.add_metric([m, idx], float(getattr(s, attr)))
            yield c
        success = CounterMetricFamily(
            "vllm:request_success", _SUCCESS_DOC, labels=[*labels, "finished_reason"]
        )
        for idx, s in engines:
            for reason, n in s.request_success.items():
                success.add_metric([m, idx, reason], float(n))
        yield success
        for name, attr, doc in _HISTOGRAMS:
            h = HistogramMetricFamily(name, doc, labels=labels)
            for idx, s in engines:
                hist: Histogram = getattr(s, attr)
                h.add_metric([m, idx], hist.cumulative(), hist.sum)
            yield h
        if self.cache_config:
            info_labels = [*sorted(self.cache_config), "engine"]
            info = GaugeMetricFamily("vllm:cache_config_info", _CACHE_INFO_DOC, labels=info_labels)
            for idx, _ in engines:
                info.add_metric(
                    [*(self.cache_config[k] for k in sorted(self.cache_config)), idx], 1.0
                )
            yield info
        if self.lora is not None:
            lora = GaugeMetricFamily(
                "vllm:lora_requests_info",
                _LORA_DOC,
                labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            )
            lora.add_metric(
                [str(self.lora.max_lora), self.lora.waiting, self.lora.running], self.lora.updated
            )
            yield lora
