"""`EndpointPickerConfig`: the YAML llm-d-inference-scheduler reads, loaded into a scheduler.

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    featureGates: [flowControl]
    plugins:                      # type, optional name (defaults to type), parameters
    - type: prefix-cache-scorer
      parameters: {blockSizeTokens: 16}
    schedulingProfiles:           # which plugins each profile uses; weights for scorers
    - name: default
      plugins:
      - pluginRef: prefix-cache-scorer
        weight: 2
    saturationDetector: {pluginRef: ...}   # or the older inline thresholds
    dataLayer: {injectDefaults: true, sources: [{pluginRef: ..., extractors: [{pluginRef: ...}]}]}
    flowControl: {maxRequests: ..., defaultRequestTTL: 30s, priorityBands: [...]}

Loading is pure (text in, objects out): a simulator builds the same scheduler with
`load_picker_config(text, seed=...)`. Every problem is one `ConfigError` line naming the
plugin, profile or field.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from llmd_epp.datalayer.extractor import CoreMetricsExtractor
from llmd_epp.datalayer.source_plugin import MetricsDataSource
from llmd_epp.flowcontrol import policies as _policies  # noqa: F401  (registers policy types)
from llmd_epp.flowcontrol.saturation import UtilizationDetector
from llmd_epp.scheduling.framework import Filter, Handle, Picker, Plugin, ProfileHandler, Scorer
from llmd_epp.scheduling.plugins.max_score_picker import MaxScorePicker
from llmd_epp.scheduling.plugins.single_profile_handler import SingleProfileHandler
from llmd_epp.scheduling.profile import SchedulerProfile
from llmd_epp.scheduling.registry import ConfigError, Duration, create_plugin, validation_line
from llmd_epp.scheduling.scheduler import Scheduler

API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")
KIND = "EndpointPickerConfig"
FLOW_CONTROL_GATE = "flowControl"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")
_SUFFIX = {
    None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def parse_quantity(value: Any) -> int:
    """A Kubernetes resource quantity ("100", "1k", "1Gi") as an integer."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    m = _QUANTITY.match(str(value).strip())
    if m is None:
        raise ValueError(f"not a quantity (e.g. 100, 1k, 1Gi): {value!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


Quantity = Annotated[int, BeforeValidator(parse_quantity)]
T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(_Model):
    type: str = Field(min_length=1)
    name: str = ""
    parameters: dict[str, Any] | None = None


class SchedulingPluginRef(_Model):
    pluginRef: str = Field(min_length=1)
    weight: float | None = None


class SchedulingProfileSpec(_Model):
    name: str = Field(min_length=1)
    plugins: list[SchedulingPluginRef] = Field(default_factory=list)


class SaturationDetectorSpec(_Model):
    pluginRef: str = ""
    # Deprecated inline thresholds, still read.
    queueDepthThreshold: int = Field(default=0, ge=0)
    kvCacheUtilThreshold: float = Field(default=0.0, ge=0, le=1)
    metricsStalenessThreshold: Duration = 0.0


class PluginRef(_Model):
    pluginRef: str = Field(min_length=1)


class DataLayerSource(_Model):
    pluginRef: str = Field(min_length=1)
    extractors: list[PluginRef] = Field(default_factory=list)


class DataLayerSpec(_Model):
    injectDefaults: bool = True
    sources: list[DataLayerSource] = Field(default_factory=list)


class PriorityBandSpec(_Model):
    priority: int
    maxBytes: Quantity | None = None
    maxRequests: Quantity | None = None
    fairnessPolicyRef: str = ""
    orderingPolicyRef: str = ""


class FlowControlSpec(_Model):
    maxBytes: Quantity | None = None
    maxRequests: Quantity | None = None
    defaultRequestTTL: Duration | None = None
    defaultPriorityBand: PriorityBandSpec | None = None
    priorityBands: list[PriorityBandSpec] = Field(default_factory=list)
    usageLimitPolicyPluginRef: str = ""


class EndpointPickerConfigSpec(_Model):
    apiVersion: str = API_VERSIONS[0]
    kind: str = KIND
    featureGates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    schedulingProfiles: list[SchedulingProfileSpec] = Field(default_factory=list)
    saturationDetector: SaturationDetectorSpec | None = None
    dataLayer: DataLayerSpec | None = None
    flowControl: FlowControlSpec | None = None
    parser: PluginRef | None = None
    discovery: PluginRef | None = None


@dataclass(slots=True)
class FlowControlConfig:
    """Flow control as configured (used when the `flowControl` feature gate is on)."""

    enabled: bool = False
    max_requests: int | None = None
    max_bytes: int | None = None
    default_ttl: float | None = None
    bands: dict[int, PriorityBandSpec] = field(default_factory=dict)
    default_band: PriorityBandSpec | None = None


@dataclass(slots=True)
class PickerConfig:
    """Everything the configuration instantiates."""

    scheduler: Scheduler
    plugins: dict[str, Plugin]
    detector: UtilizationDetector
    data_source: MetricsDataSource | None
    extractor: CoreMetricsExtractor
    flow_control: FlowControlConfig
    feature_gates: list[str]
    spec: EndpointPickerConfigSpec
    # Legal but probably not meant (one line each; the service logs them at start-up).
    warnings: list[str] = field(default_factory=list)


DEFAULT_CONFIG = f"""
apiVersion: {API_VERSIONS[0]}
kind: {KIND}
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def parse_spec(text: str, source: str = "config") -> EndpointPickerConfigSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: must be a mapping, got {type(doc).__name__}")
    if "data" in doc and "dataLayer" not in doc:  # early spelling
        doc = {**doc, "dataLayer": doc.pop("data")}
    try:
        spec = EndpointPickerConfigSpec.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_line(exc, '').lstrip('.')}") from None
    if spec.kind != KIND:
        raise ConfigError(f"{source}: kind: must be {KIND}, got {spec.kind!r}")
    if spec.apiVersion not in API_VERSIONS:
        raise ConfigError(
            f"{source}: apiVersion: must be one of {', '.join(API_VERSIONS)}, got {spec.apiVersion!r}"
        )
    return spec


def load_picker_config(
    text: str | None = None,
    *,
    source: str = "config",
    seed: int | None = None,
    deps: dict[str, Any] | None = None,
) -> PickerConfig:
    """Build the scheduler and the data-layer/flow-control settings from YAML text.

    `deps` are service-provided dependencies for plugins (the kvmanager client factory and
    address; or a `prefix_score_source` for an in-process index). No text: the default config.
    """
    spec = parse_spec(DEFAULT_CONFIG if text is None else text, source)
    handle = Handle(rng=random.Random(seed), **(deps or {}))
    plugins: dict[str, Plugin] = {}
    for i, ps in enumerate(spec.plugins):
        name = ps.name or ps.type
        if name in plugins:
            raise ConfigError(f"{source}: plugins[{i}]: duplicate plugin name {name!r}")
        try:
            plugins[name] = create_plugin(ps.type, name, ps.parameters, handle)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    profiles = _build_profiles(spec, plugins, handle, source)
    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        names = ", ".join(p.name for p in handlers)
        raise ConfigError(f"{source}: plugins: more than one profile handler ({names})")
    if handlers:
        handler = handlers[0]
    elif len(profiles) == 1:
        handler = SingleProfileHandler()
    else:
        raise ConfigError(
            f"{source}: plugins: {len(profiles)} scheduling profiles need a profile handler "
            "(e.g. pd-profile-handler)"
        )
    scheduler = Scheduler(profiles, handler, list(plugins.values()))
    data_source, extractor = _data_source(spec, plugins, source)
    # A plugin that reads another's prefix-cache state by name (`prefixPluginName`) finds
    # nothing when that name is not in the config, and silently runs as if every request
    # were cold (no-hit-lru-scorer: every request spread by LRU; P/D: always disaggregate).
    warnings = [
        f"{source}: plugin {name!r} (type {plugin.TYPE!r}): prefix plugin {ref!r} is not in "
        "this config, so it sees no prefix-cache data"
        for name, plugin in plugins.items()
        if (ref := getattr(plugin, "prefix_plugin", "")) and ref not in plugins
    ]
    return PickerConfig(
        scheduler=scheduler,
        plugins=plugins,
        detector=_detector(spec, plugins, source),
        data_source=data_source,
        extractor=extractor,
        flow_control=_flow_control(spec, plugins, source),
        feature_gates=list(spec.featureGates),
        spec=spec,
        warnings=warnings,
    )


def _build_profiles(
    spec: EndpointPickerConfigSpec, plugins: dict[str, Plugin], handle: Handle, source: str
) -> dict[str, SchedulerProfile]:
    if not spec.schedulingProfiles:
        raise ConfigError(f"{source}: schedulingProfiles: at least one profile is required")
    profiles: dict[str, SchedulerProfile] = {}
    for i, prof in enumerate(spec.schedulingProfiles):
        where = f"{source}: schedulingProfiles[{i}] ({prof.name})"
        if prof.name in profiles:
            raise ConfigError(f"{where}: duplicate profile name")
        filters: list[Filter] = []
        scorers: list[tuple[Scorer, float]] = []
        pickers: list[Picker] = []
        for j, ref in enumerate(prof.plugins):
            plugin = plugins.get(ref.pluginRef)
            if plugin is None:
                raise ConfigError(
                    f"{where}.plugins[{j}].pluginRef: no plugin named {ref.pluginRef!r}"
                )
            if isinstance(plugin, Filter):
                filters.append(plugin)
            elif isinstance(plugin, Scorer):
                weight = 1.0 if ref.weight is None else ref.weight
                scorers.append((plugin, weight))
            elif isinstance(plugin, Picker):
                pickers.append(plugin)
            else:
                raise ConfigError(
                    f"{where}.plugins[{j}].pluginRef: {ref.pluginRef!r} ({plugin.TYPE}) is not a "
                    "filter, scorer or picker"
                )
        if len(pickers) > 1:
            raise ConfigError(f"{where}: more than one picker")
        picker = pickers[0] if pickers else MaxScorePicker("max-score-picker", rng=handle.rng)
        profiles[prof.name] = SchedulerProfile(prof.name, filters, scorers, picker)
    return profiles


def _detector(
    spec: EndpointPickerConfigSpec, plugins: dict[str, Plugin], source: str
) -> UtilizationDetector:
    sd = spec.saturationDetector
    if sd is not None and sd.pluginRef:
        found = plugins.get(sd.pluginRef)
        if not isinstance(found, UtilizationDetector):
            raise ConfigError(
                f"{source}: saturationDetector.pluginRef: {sd.pluginRef!r} is not a configured "
                "utilization-detector"
            )
        return found
    configured = [p for p in plugins.values() if isinstance(p, UtilizationDetector)]
    detector = configured[0] if configured else UtilizationDetector()
    if sd is not None:
        if sd.queueDepthThreshold:
            detector.queue_depth = sd.queueDepthThreshold
        if sd.kvCacheUtilThreshold:
            detector.kv_util = sd.kvCacheUtilThreshold
        if sd.metricsStalenessThreshold:
            detector.staleness = sd.metricsStalenessThreshold
    return detector


def _data_source(
    spec: EndpointPickerConfigSpec, plugins: dict[str, Plugin], source: str
) -> tuple[MetricsDataSource | None, CoreMetricsExtractor]:
    dl = spec.dataLayer or DataLayerSpec()
    for i, src in enumerate(dl.sources):
        ds = plugins.get(src.pluginRef)
        if not isinstance(ds, MetricsDataSource):
            raise ConfigError(
                f"{source}: dataLayer.sources[{i}].pluginRef: {src.pluginRef!r} is not a "
                "configured metrics-data-source"
            )
        extractor: CoreMetricsExtractor | None = None
        for j, ex in enumerate(src.extractors):
            found = plugins.get(ex.pluginRef)
            if not isinstance(found, CoreMetricsExtractor):
                raise ConfigError(
                    f"{source}: dataLayer.sources[{i}].extractors[{j}].pluginRef: "
                    f"{ex.pluginRef!r} is not a configured core-metrics-extractor"
                )
            extractor = found
        return ds, extractor or _first(plugins, CoreMetricsExtractor) or CoreMetricsExtractor()
    extractor = _first(plugins, CoreMetricsExtractor) or CoreMetricsExtractor()
    ds_found = _first(plugins, MetricsDataSource)
    if ds_found is not None:
        return ds_found, extractor
    return (MetricsDataSource() if dl.injectDefaults else None), extractor


def _first(plugins: dict[str, Plugin], kind: type[T]) -> T | None:
    return next((p for p in plugins.values() if isinstance(p, kind)), None)


def _flow_control(
    spec: EndpointPickerConfigSpec, plugins: dict[str, Plugin], source: str
) -> FlowControlConfig:
    fc = spec.flowControl
    out = FlowControlConfig(enabled=FLOW_CONTROL_GATE in spec.featureGates)
    if fc is None:
        return out
    out.max_requests = fc.maxRequests
    out.max_bytes = fc.maxBytes
    out.default_ttl = fc.defaultRequestTTL or None
    out.default_band = fc.defaultPriorityBand
    for i, band in enumerate(fc.priorityBands):
        if band.priority in out.bands:
            raise ConfigError(
                f"{source}: flowControl.priorityBands[{i}].priority: duplicate band {band.priority}"
            )
        for ref_field in ("fairnessPolicyRef", "orderingPolicyRef"):
            ref = getattr(band, ref_field)
            if ref and ref not in plugins and ref not in _BUILTIN_POLICIES:
                raise ConfigError(
                    f"{source}: flowControl.priorityBands[{i}].{ref_field}: no plugin named {ref!r}"
                )
        out.bands[band.priority] = band
    return out


_BUILTIN_POLICIES = {
    "fcfs-ordering-policy",
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
}
