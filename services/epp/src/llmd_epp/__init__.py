"""Endpoint Picker: a pluggable, cache-aware inference scheduler behind Envoy ext_proc."""

from importlib.metadata import version as _version

__version__ = _version("llmd-epp")
