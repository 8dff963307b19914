"""Engine `/metrics` text -> `EndpointMetrics`, configured like upstream's
`core-metrics-extractor` (per-engine metric specs, engine chosen by a pod label).

Only the lines of the metrics we read are handed to prometheus-client's parser: a vLLM
exposition is mostly histograms we do not need, and at 50 ms per endpoint the full parse would
dominate the EPP's CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from llmd_epp.scheduling.framework import Handle, Plugin
from llmd_epp.scheduling.registry import PluginParams, register
from llmd_epp.scheduling.types import EndpointMetrics

DEFAULT_ENGINE_LABEL_KEY = "inference.networking.k8s.io/engine-type"
_SPEC = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric name with optional label matchers: `name` or `name{label="value",...}`."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MetricSpec | None:
        if not text.strip():
            return None
        m = _SPEC.match(text)
        if m is None:
            raise ValueError(f'not a metric spec (name or name{{label="value"}}): {text!r}')
        labels: list[tuple[str, str]] = []
        body = m.group(2) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            if lm is None:
                raise ValueError(f"bad label matcher in metric spec {text!r}")
            labels.append((lm.group(1), lm.group(2)))
            pos = lm.end()
        return cls(m.group(1), tuple(labels))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels)


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    queuedRequestsSpec: str = ""
    runningRequestsSpec: str = ""
    kvUsageSpec: str = ""
    loraSpec: str = ""
    cacheInfoSpec: str = ""


DEFAULT_ENGINES = (
    EngineConfig(
        name="vllm",
        queuedRequestsSpec="vllm:num_requests_waiting",
        runningRequestsSpec="vllm:num_requests_running",
        kvUsageSpec="vllm:kv_cache_usage_perc",
        loraSpec="vllm:lora_requests_info",
        cacheInfoSpec="vllm:cache_config_info",
    ),
    EngineConfig(
        name="sglang",
        queuedRequestsSpec="sglang:num_queue_reqs",
        runningRequestsSpec="sglang:num_running_reqs",
        kvUsageSpec="sglang:token_usage",
    ),
    EngineConfig(
        name="trtllm-serve",
        queuedRequestsSpec="trtllm_num_requests_waiting",
        runningRequestsSpec="trtllm_num_requests_running",
        kvUsageSpec="trtllm_kv_cache_utilization",
    ),
)


class MetricsMapping:
    """The specs of one engine type, and the extraction of a snapshot from exposition text."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.engine = cfg.name
        self.queued = MetricSpec.parse(cfg.queuedRequestsSpec)
        self.running = MetricSpec.parse(cfg.runningRequestsSpec)
        self.kv = MetricSpec.parse(cfg.kvUsageSpec)
        self.lora = MetricSpec.parse(cfg.loraSpec)
        self.cache_info = MetricSpec.parse(cfg.cacheInfoSpec)
        specs = [self.queued, self.running, self.kv, self.lora, self.cache_info]
        self.names = tuple(s.name for s in specs if s is not None)

    def _relevant(self, text: str) -> str:
        names = self.names
        keep = []
        for line in text.splitlines():
            if not line or line[0] == "#":
                # TYPE lines let the parser type the family; keep ours only.
                if line.startswith(("# TYPE ", "# HELP ")):
                    parts = line.split(" ", 3)
                    if len(parts) > 2 and parts[2] in names:
                        keep.append(line)
                continue
            if line.startswith(names):
                keep.append(line)
        return "\n".join(keep) + "\n"

    def extract(self, text: str, now: float) -> EndpointMetrics:
        """A snapshot from exposition text; raises ValueError when a required metric is absent.

        Several series of one metric (several models or engine labels) are added up for the
        queue lengths; the highest KV usage counts.
        """
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self._relevant(text)):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        out = EndpointMetrics(updated_at=now)

        def series(spec: MetricSpec) -> list[tuple[dict[str, str], float]]:
            found = [(lb, v) for lb, v in samples.get(spec.name, ()) if spec.matches(lb)]
            if not found:
                raise ValueError(f"metric {spec.name} missing from /metrics")
            return found

        if self.queued is not None:
            out.waiting = int(sum(v for _, v in series(self.queued)))
        if self.running is not None:
            out.running = int(sum(v for _, v in series(self.running)))
        if self.kv is not None:
            out.kv_usage = max(v for _, v in series(self.kv))
        if self.lora is not None and self.lora.name in samples:
            # The info gauge's value is a timestamp: the newest series is the current state.
            labels, _ = max(series(self.lora), key=lambda lv: lv[1])
            out.active_adapters = _adapters(labels.get("running_lora_adapters", ""))
            out.waiting_adapters = _adapters(labels.get("waiting_lora_adapters", ""))
            out.max_adapters = int(float(labels.get("max_lora", "0") or 0))
        if self.cache_info is not None and self.cache_info.name in samples:
            labels, _ = series(self.cache_info)[0]
            out.block_size = int(float(labels.get("block_size", "0") or 0))
            out.num_gpu_blocks = int(float(labels.get("num_gpu_blocks", "0") or 0))
        return out


def _adapters(value: str) -> frozenset[str]:
    return frozenset(a.strip() for a in value.split(",") if a.strip())


@register()
class CoreMetricsExtractor(Plugin):
    """`core-metrics-extractor`: which metrics to read, per engine type."""

    TYPE = "core-metrics-extractor"

    class Params(PluginParams):
        engineLabelKey: str = DEFAULT_ENGINE_LABEL_KEY
        defaultEngine: str = "vllm"
        engineConfigs: list[EngineConfig] = Field(default_factory=list)

    def __init__(
        self,
        name: str = "",
        engine_label_key: str = DEFAULT_ENGINE_LABEL_KEY,
        default_engine: str = "vllm",
        engines: list[EngineConfig] | None = None,
    ) -> None:
        super().__init__(name)
        self.engine_label_key = engine_label_key
        configs = {e.name: e for e in DEFAULT_ENGINES}
        configs.update({e.name: e for e in engines or []})
        if default_engine not in configs:
            raise ValueError(
                f"parameters.defaultEngine: {default_engine!r} is not one of {sorted(configs)}"
            )
        self.mappings: dict[str, MetricsMapping] = {}
        for engine_name, cfg in configs.items():
            try:
                self.mappings[engine_name] = MetricsMapping(cfg)
            except ValueError as exc:
                raise ValueError(f"parameters.engineConfigs[{engine_name}]: {exc}") from None
        self.default = self.mappings[default_engine]

    @classmethod
    def create(
        cls, name: str, params: CoreMetricsExtractor.Params, handle: Handle
    ) -> CoreMetricsExtractor:
        return cls(name, params.engineLabelKey, params.defaultEngine, list(params.engineConfigs))

    def mapping_for(self, labels: Mapping[str, str]) -> MetricsMapping:
        engine = labels.get(self.engine_label_key)
        return self.mappings.get(engine, self.default) if engine else self.default
