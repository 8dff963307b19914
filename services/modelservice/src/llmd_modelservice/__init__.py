"""Model lifecycle manager: plans, starts, health-checks and restarts inference engines."""

from importlib.metadata import version as _version

__version__ = _version("llmd-modelservice")
