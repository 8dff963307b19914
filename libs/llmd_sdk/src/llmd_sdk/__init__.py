"""Shared SDK of the llm-d Python stack: wire contracts, Envoy ext_proc server base and client, OpenAI request models, vLLM block hashing and KV events, telemetry, hardware detection, settings, health and retry policies."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("llmd-sdk")
except PackageNotFoundError:  # imported from a source tree (PYTHONPATH=libs/llmd_sdk/src)
    __version__ = "0.0.0+source"
