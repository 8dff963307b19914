"""Wide expert parallelism for MoE models: placement, dispatch/combine, rank-aware routing.

Control plane (numpy only): ``placement``, ``balancer``, ``planner``, ``service``, ``http_api``,
``rank_routing``. Data plane (needs torch, imported only on use): ``dataplane``.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("llmd-expert-router")
except PackageNotFoundError:  # run from a source tree (e.g. PYTHONPATH on a GPU box)
    __version__ = "0+unknown"
