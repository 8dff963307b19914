"""The example Envoy configuration parses as Envoy's own protos (field names and types)."""

from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "bbr"


def test_envoy_bootstrap_is_valid_envoy_config() -> None:
    # The typed_config `@type`s resolve through these modules' descriptors.
    import envoy.extensions.filters.http.router.v3.router_pb2
    import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 as hcm_pb2
    import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2

    doc = yaml.safe_load((EXAMPLES / "envoy.yaml").read_text())
    bootstrap = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    hcm = hcm_pb2.HttpConnectionManager()
    bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    ext = ext_proc_pb2.ExternalProcessor()
    assert hcm.http_filters[0].typed_config.Unpack(ext)
    mode = processing_mode_pb2.ProcessingMode
    assert ext.processing_mode.request_body_mode == mode.FULL_DUPLEX_STREAMED
    assert ext.processing_mode.request_trailer_mode == mode.SEND
    assert ext.grpc_service.envoy_grpc.cluster_name == "bbr"
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    check = clusters["bbr"].health_checks[0].grpc_health_check
    assert check.service_name == "envoy.service.ext_proc.v3.ExternalProcessor"
    routed = {h.name for r in hcm.route_config.virtual_hosts[0].routes for h in r.match.headers}
    assert routed == {"x-gateway-model-name", "x-gateway-base-model-name"}


def test_envoy_gateway_policy_is_yaml_with_the_bbr_port() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "envoy-gateway-policy.yaml").read_text()))
    policy = docs[0]
    assert policy["kind"] == "EnvoyExtensionPolicy"
    assert policy["spec"]["extProc"][0]["backendRefs"][0]["port"] == 9004
