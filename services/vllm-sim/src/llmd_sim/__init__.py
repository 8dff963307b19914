"""A vLLM-compatible engine simulator.

Same API, metrics, block hashing and KV events as vLLM, with a calibrated latency model.
"""

from importlib.metadata import version as _version

__version__ = _version("llmd-sim")
