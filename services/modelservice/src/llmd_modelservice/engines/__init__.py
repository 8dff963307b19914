"""Engine command builders: one module per engine kind, all fed the same `ReplicaContext`."""

from llmd_modelservice.engines.context import EngineCommand, ReplicaContext
from llmd_modelservice.engines.sglang import build_sglang
from llmd_modelservice.engines.sim import build_sim
from llmd_modelservice.engines.vllm import build_vllm

BUILDERS = {"vllm": build_vllm, "sglang": build_sglang, "sim": build_sim}

__all__ = ["BUILDERS", "EngineCommand", "ReplicaContext", "build_sglang", "build_sim", "build_vllm"]
