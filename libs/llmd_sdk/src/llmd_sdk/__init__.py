"""Shared SDK of the llm-d Python stack: wire contracts, Envoy ext_proc server base and client, OpenAI request models, vLLM block hashing and KV events, telemetry, hardware detection, settings, health and retry policies."""

from importlib.metadata import version as _version

__version__ = _version("llmd-sdk")
