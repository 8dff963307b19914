"""Global KV-cache block index fed by vLLM KV events; answers prefix scores over gRPC."""

from importlib.metadata import version as _version

__version__ = _version("llmd-kvmanager")
