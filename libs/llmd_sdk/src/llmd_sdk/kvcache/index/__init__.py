"""KV-block index backends behind one interface: `InMemoryIndex` (default) and `RedisIndex`."""

from llmd_sdk.kvcache.index.base import (
    MEDIUM_CPU,
    MEDIUM_GPU,
    MEDIUM_STORAGE,
    MEDIUMS,
    NO_RANK,
    ClearEndpoint,
    Holder,
    HolderSet,
    IndexOp,
    IndexStats,
    KVBlockIndex,
    RemoveBlocks,
    StoreBlocks,
)
from llmd_sdk.kvcache.index.memory import InMemoryIndex

__all__ = [
    "MEDIUMS",
    "MEDIUM_CPU",
    "MEDIUM_GPU",
    "MEDIUM_STORAGE",
    "NO_RANK",
    "ClearEndpoint",
    "Holder",
    "HolderSet",
    "InMemoryIndex",
    "IndexOp",
    "IndexStats",
    "KVBlockIndex",
    "RemoveBlocks",
    "StoreBlocks",
]
