"""Wire contracts: Envoy's ext_proc v3 messages (from `xds-protos`) and the SDK's own protos.

Import from here rather than from the generated modules, so a regeneration or an xds-protos
upgrade touches one place.
"""

from envoy.config.core.v3 import base_pb2 as envoy_base
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as processing_mode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2 as http_status

from llmd_sdk.contracts.gen.llmd.kvindex.v1 import kvindex_pb2 as kvindex
from llmd_sdk.contracts.gen.llmd.kvindex.v1 import kvindex_pb2_grpc as kvindex_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
KVINDEX_SERVICE = "llmd.kvindex.v1.KVIndex"

__all__ = [
    "EXT_PROC_SERVICE",
    "KVINDEX_SERVICE",
    "envoy_base",
    "ext_proc",
    "ext_proc_grpc",
    "http_status",
    "kvindex",
    "kvindex_grpc",
    "processing_mode",
]
