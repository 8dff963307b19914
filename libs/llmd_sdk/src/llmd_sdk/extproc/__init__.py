"""Envoy ext_proc for processors and for the harness that stands in for Envoy.

Processors subclass `ExtProcStream` (one object per exchange, hooks returning `Reply`) and serve
it with `ExtProcServicer`/`GrpcServer`. `EnvoyClient` drives HTTP exchanges through a chain of
processors with Envoy's semantics for every body mode.
"""

from llmd_sdk.extproc.client import (
    EnvoyClient,
    Exchange,
    FilterConfig,
    LocalReply,
    RequestOutcome,
    ResponseHeadersOutcome,
)
from llmd_sdk.extproc.messages import (
    Headers,
    dynamic_metadata,
    error_response,
    header_mutation,
    headers_to_dict,
    immediate_response,
    metadata_context,
    openai_error_json,
)
from llmd_sdk.extproc.modes import BodyMode, HeaderMode
from llmd_sdk.extproc.reply import CONTINUE, Reply
from llmd_sdk.extproc.server import ExtProcServicer, GrpcServer, ext_proc_registrar, wait_for_signal
from llmd_sdk.extproc.stream import ExtProcStream, StreamContext

__all__ = [
    "CONTINUE",
    "BodyMode",
    "EnvoyClient",
    "Exchange",
    "ExtProcServicer",
    "ExtProcStream",
    "FilterConfig",
    "GrpcServer",
    "HeaderMode",
    "Headers",
    "LocalReply",
    "Reply",
    "RequestOutcome",
    "ResponseHeadersOutcome",
    "StreamContext",
    "dynamic_metadata",
    "error_response",
    "ext_proc_registrar",
    "header_mutation",
    "headers_to_dict",
    "immediate_response",
    "metadata_context",
    "openai_error_json",
    "wait_for_signal",
]
