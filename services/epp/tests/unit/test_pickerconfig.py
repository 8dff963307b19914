"""EndpointPickerConfig loading: upstream-shaped configs load unchanged; every mistake is one
line naming the plugin, profile or field."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmd_epp.datalayer.extractor import CoreMetricsExtractor
from llmd_epp.pickerconfig import load_picker_config, parse_quantity
from llmd_epp.scheduling import PREFILLER_HEADER, ConfigError
from llmd_epp.scheduling.plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from llmd_epp.scheduling.plugins.max_score_picker import MaxScorePicker
from llmd_epp.scheduling.plugins.pd_profile_handler import PdProfileHandler
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from llmd_epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer

from .helpers import ep, req

CONFIGS = Path(__file__).parent.parent / "configs"
EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "epp"
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def load(name: str, **kw: object) -> object:
    return load_picker_config((CONFIGS / name).read_text(), source=name, seed=1, **kw)  # type: ignore[arg-type]


def test_upstream_default_config_loads_unchanged() -> None:
    cfg = load_picker_config((CONFIGS / "upstream-default.yaml").read_text(), seed=1)
    prof = cfg.scheduler.profiles["default"]
    weights = {s.TYPE: w for s, w in prof.scorers}
    assert weights == {
        "queue-scorer": 1.0,
        "kv-cache-utilization-scorer": 1.0,
        "prefix-cache-scorer": 3.0,
    }
    assert isinstance(cfg.plugins["kv-cache-scorer"], KVCacheUtilizationScorer)
    prefix = cfg.plugins["prefix-cache-scorer"]
    assert isinstance(prefix, PrefixCacheScorer) and prefix.block_chars == 64
    assert isinstance(prof.picker, MaxScorePicker) and prof.picker.max_endpoints == 1
    assert cfg.data_source is not None and cfg.data_source.path == "/metrics"
    result = cfg.scheduler.schedule(req("hi"), [ep(1, waiting=3), ep(2)], 0.0)
    assert result.destination_list() == ["10.0.0.2:8000"]


def test_upstream_pd_config_loads_and_disaggregates() -> None:
    cfg = load_picker_config((CONFIGS / "upstream-pd.yaml").read_text(), seed=1)
    handler = cfg.scheduler.handler
    assert isinstance(handler, PdProfileHandler)
    assert (handler.threshold, handler.hash_block_size) == (10, 5)
    role = "llm-d.ai/role"
    pool = [ep(1, labels={role: "prefill"}), ep(2, labels={role: "decode"})]
    result = cfg.scheduler.schedule(req("a long enough prompt to prefill"), pool, 0.0)
    cfg.scheduler.pre_request(req(), result, 0.0)
    assert result.destination_list() == [pool[1].key]
    assert result.headers[PREFILLER_HEADER] == pool[0].key


def test_upstream_precise_config_loads_with_kvmanager_factory() -> None:
    made: list[tuple[str, float]] = []

    class Client:
        def __init__(self, address: str, timeout: float) -> None:
            made.append((address, timeout))

        async def score(self, request: object, endpoints: object) -> object:
            raise AssertionError

    cfg = load_picker_config(
        (CONFIGS / "upstream-precise.yaml").read_text(),
        deps={"kvindex_client_factory": Client, "kvmanager_address": "kv:9010"},
    )
    scorer = cfg.plugins["precise-prefix-cache-scorer"]
    assert isinstance(scorer, PrecisePrefixCacheScorer) and scorer.is_async
    assert made == [("kv:9010", 0.1)]


def test_upstream_flow_control_config() -> None:
    cfg = load_picker_config((CONFIGS / "upstream-flow-control.yaml").read_text())
    assert cfg.flow_control.enabled
    assert cfg.flow_control.max_requests == 2000
    assert cfg.flow_control.default_ttl == 30.0
    assert sorted(cfg.flow_control.bands) == [-10, 0, 100]
    assert cfg.flow_control.bands[0].maxRequests == 1000
    assert (cfg.detector.queue_depth, cfg.detector.kv_util, cfg.detector.staleness) == (
        8,
        0.9,
        0.25,
    )
    assert isinstance(cfg.extractor, CoreMetricsExtractor)
    assert cfg.extractor.default.lora is None  # loraSpec: "" disables LoRA metrics
    assert cfg.data_source is cfg.plugins["metrics-data-source"]


def test_default_config_when_none_given() -> None:
    cfg = load_picker_config(None)
    assert {s.TYPE for s, _ in cfg.scheduler.profiles["default"].scorers} == {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
    }
    assert not cfg.flow_control.enabled


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    cfg = load_picker_config(path.read_text(), source=path.name)
    assert cfg.warnings == []


def test_a_prefix_plugin_name_not_in_the_config_is_a_warning_naming_both() -> None:
    # no-hit-lru-scorer reads `prefix-cache-scorer` by default; here the prefix plugin is the
    # precise one, so without prefixPluginName every request would count as cold.
    body = HEAD + (
        "plugins:\n"
        "- {type: precise-prefix-cache-scorer}\n"
        "- {type: no-hit-lru-scorer}\n"
        "- {type: no-hit-lru-scorer, name: lru2, parameters: "
        "{prefixPluginName: precise-prefix-cache-scorer}}\n"
        "schedulingProfiles:\n"
        "- name: default\n"
        "  plugins: [{pluginRef: precise-prefix-cache-scorer}, {pluginRef: no-hit-lru-scorer},"
        " {pluginRef: lru2}]\n"
    )
    cfg = load_picker_config(body, source="c.yaml")
    assert cfg.warnings == [
        "c.yaml: plugin 'no-hit-lru-scorer' (type 'no-hit-lru-scorer'): prefix plugin "
        "'prefix-cache-scorer' is not in this config, so it sees no prefix-cache data"
    ]


def test_inline_saturation_thresholds_and_injected_defaults_off() -> None:
    text = HEAD + (
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]\n"
        "saturationDetector: {queueDepthThreshold: 3, kvCacheUtilThreshold: 0.5}\n"
        "dataLayer: {injectDefaults: false}\n"
    )
    cfg = load_picker_config(text)
    assert (cfg.detector.queue_depth, cfg.detector.kv_util) == (3, 0.5)
    assert cfg.data_source is None


BAD = [
    ("plugins: [{type: no-such-scorer}]\nschedulingProfiles: [{name: d}]",
     "plugin 'no-such-scorer': unknown plugin type 'no-such-scorer'"),
    ("plugins: [{type: prefix-cache-scorer, parameters: {blockSizeTokens: big}}]\n"
     "schedulingProfiles: [{name: d, plugins: [{pluginRef: prefix-cache-scorer}]}]",
     "plugin 'prefix-cache-scorer': parameters.blockSizeTokens: input should be a valid integer"),
    ("plugins: [{type: max-score-picker, name: pick, parameters: {maxNumOfEndpoint: 2}}]\n"
     "schedulingProfiles: [{name: d, plugins: [{pluginRef: pick}]}]",
     "plugin 'pick' (type 'max-score-picker'): parameters.maxNumOfEndpoint: unknown parameter"),
    ("plugins: [{type: by-label, parameters: {validValues: [a]}}]\n"
     "schedulingProfiles: [{name: d, plugins: [{pluginRef: by-label}]}]",
     "plugin 'by-label': parameters.label: required"),
    ("plugins: [{type: load-aware-scorer, parameters: {threshold: -1}}]\n"
     "schedulingProfiles: [{name: d}]",
     "plugin 'load-aware-scorer': parameters.threshold: input should be greater than 0"),
    ("plugins: [{type: queue-scorer}]\n"
     "schedulingProfiles: [{name: d, plugins: [{pluginRef: kv-scorer}]}]",
     "schedulingProfiles[0] (d).plugins[0].pluginRef: no plugin named 'kv-scorer'"),
    ("plugins: [{type: queue-scorer}, {type: queue-scorer}]\nschedulingProfiles: [{name: d}]",
     "plugins[1]: duplicate plugin name 'queue-scorer'"),
    ("plugins: [{type: queue-scorer}]\n"
     "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]},"
     " {name: b, plugins: [{pluginRef: queue-scorer}]}]",
     "2 scheduling profiles need a profile handler"),
    ("plugins: [{type: pd-profile-handler, parameters: {deciderPluginName: nope}}]\n"
     "schedulingProfiles: [{name: decode}]",
     "plugin 'pd-profile-handler': parameters.deciderPluginName: no plugin named 'nope'"),
    ("plugins: [{type: active-request-scorer, parameters: {requestTimeout: soon}}]\n"
     "schedulingProfiles: [{name: d}]",
     "plugin 'active-request-scorer': parameters.requestTimeout: value error"),
    ("plugins: []\nschedulingProfiles: []", "schedulingProfiles: at least one profile"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\nflowControl: {maxRequests: lots}",
     "flowControl.maxRequests: value error"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\nsaturationDetector: {pluginRef: x}",
     "saturationDetector.pluginRef: 'x' is not a configured utilization-detector"),
    ("plugin: []\nschedulingProfiles: [{name: d}]", "plugin: unknown parameter"),
    ("plugins: [{type: core-metrics-extractor, parameters: {defaultEngine: tgi}}]\n"
     "schedulingProfiles: [{name: d}]",
     "plugin 'core-metrics-extractor': parameters.defaultEngine: 'tgi' is not one of"),
    ("plugins: [{type: core-metrics-extractor, parameters: {engineConfigs: "
     "[{name: x, kvUsageSpec: 'bad spec{'}]}}]\nschedulingProfiles: [{name: d}]",
     "parameters.engineConfigs[x]: not a metric spec"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), BAD)
def test_bad_configs_fail_with_one_line_naming_the_field(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_picker_config(HEAD + body, source="epp.yaml")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("epp.yaml: ")
    assert message in text, text


def test_yaml_and_header_errors() -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_picker_config("a: [\nb: :", source="x")
    with pytest.raises(ConfigError, match="kind: must be EndpointPickerConfig"):
        load_picker_config("kind: Other\nschedulingProfiles: [{name: d}]")
    with pytest.raises(ConfigError, match="apiVersion"):
        load_picker_config("apiVersion: v9\nschedulingProfiles: [{name: d}]")


def test_quantities() -> None:
    assert parse_quantity("1k") == 1000
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity(42) == 42
    with pytest.raises(ValueError):
        parse_quantity("1 GB")
