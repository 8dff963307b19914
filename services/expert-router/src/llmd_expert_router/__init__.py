"""Wide expert parallelism for MoE models: expert placement, dispatch/combine and rank-aware routing."""

from importlib.metadata import version as _version

__version__ = _version("llmd-expert-router")
