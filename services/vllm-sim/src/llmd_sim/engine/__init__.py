"""The simulated engine: vLLM v1's scheduler and KV block manager, pure and in virtual time."""

from llmd_sim.engine.core import EngineConfig, EngineCore, StepResult
from llmd_sim.engine.kv_cache import FastBlockHasher, KVCacheManager, PrefixCacheStats
from llmd_sim.engine.request import FINISH_REASON, LoRA, Request, RequestStatus

__all__ = [
    "FINISH_REASON",
    "EngineConfig",
    "EngineCore",
    "FastBlockHasher",
    "KVCacheManager",
    "LoRA",
    "PrefixCacheStats",
    "Request",
    "RequestStatus",
    "StepResult",
]
