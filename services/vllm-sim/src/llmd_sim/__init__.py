"""A vLLM-compatible engine simulator: same API, metrics, block hashing and KV events, with a calibrated latency model."""

from importlib.metadata import version as _version

__version__ = _version("llmd-sim")
