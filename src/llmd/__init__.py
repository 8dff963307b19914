"""The `llmd` distribution: the command line of the llm-d Python stack."""

from importlib.metadata import version as _version

__version__ = _version("llmd")
