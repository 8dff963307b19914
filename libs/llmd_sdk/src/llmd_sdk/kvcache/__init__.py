"""vLLM's prefix-cache contracts: block hashing and KV events, shared by producer and consumers.

`hashing` reproduces vLLM's block hashes bit for bit; `events` holds the msgspec structs and ZMQ
framing of vLLM's KV-event stream. Both are pure (no I/O) so every service computes the same keys.
"""

from llmd_sdk.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    decode_batch,
    encode_batch,
)
from llmd_sdk.kvcache.hashing import BlockHasher, HashAlgo, block_key

__all__ = [
    "AllBlocksCleared",
    "BlockHasher",
    "BlockRemoved",
    "BlockStored",
    "HashAlgo",
    "KVEventBatch",
    "block_key",
    "decode_batch",
    "encode_batch",
]
