"""vLLM's prefix-cache contracts and the global KV-block index built on them.

Contracts (pure, shared by producers and consumers): `hashing` reproduces vLLM's block hashes bit
for bit; `events` holds the msgspec structs and ZMQ framing of vLLM's KV-event stream.

The index (used by kvmanager, and in-process by the EPP): `index` (the `KVBlockIndex` interface,
`InMemoryIndex`, `index.redis.RedisIndex`), `applier` (batches -> index operations, sequence
tracking), `scorer` (longest-prefix scores with tier weights), `request_keys` (request -> block
keys with prefix caches), `indexer` (all of it behind one call), `subscriber` (ZMQ ingestion).
"""

from llmd_sdk.kvcache.applier import EventApplier, PublisherKey, SeqStatus
from llmd_sdk.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    decode_batch,
    encode_batch,
)
from llmd_sdk.kvcache.hashing import BlockHasher, HashAlgo, block_key, block_keys
from llmd_sdk.kvcache.index import (
    ClearEndpoint,
    Holder,
    IndexStats,
    InMemoryIndex,
    KVBlockIndex,
    RemoveBlocks,
    StoreBlocks,
)
from llmd_sdk.kvcache.indexer import PrefixCacheIndexer, ScoreResult, UnknownModelError
from llmd_sdk.kvcache.request_keys import BlockKeyCache, RequestKeyer, TokenCache, Tokenizer
from llmd_sdk.kvcache.scorer import DEFAULT_TIER_WEIGHTS, EndpointScore, PrefixScorer
from llmd_sdk.kvcache.topics import DEFAULT_TOPIC_PATTERN, TopicPattern

__all__ = [
    "DEFAULT_TIER_WEIGHTS",
    "DEFAULT_TOPIC_PATTERN",
    "AllBlocksCleared",
    "BlockHasher",
    "BlockKeyCache",
    "BlockRemoved",
    "BlockStored",
    "ClearEndpoint",
    "EndpointScore",
    "EventApplier",
    "HashAlgo",
    "Holder",
    "InMemoryIndex",
    "IndexStats",
    "KVBlockIndex",
    "KVEventBatch",
    "PrefixCacheIndexer",
    "PrefixScorer",
    "PublisherKey",
    "RemoveBlocks",
    "RequestKeyer",
    "ScoreResult",
    "SeqStatus",
    "StoreBlocks",
    "TokenCache",
    "Tokenizer",
    "TopicPattern",
    "UnknownModelError",
    "block_key",
    "block_keys",
    "decode_batch",
    "encode_batch",
]
