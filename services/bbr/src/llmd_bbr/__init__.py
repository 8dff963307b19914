"""Body-Based Router: an Envoy ext_proc service that lifts the OpenAI `model` into the X-Gateway-Model-Name header."""

from importlib.metadata import version as _version

__version__ = _version("llmd-bbr")
