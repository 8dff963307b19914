"""vLLM's KV-event stream: msgspec structs, msgpack payloads and ZMQ framing.

Wire format (vLLM ``vllm/distributed/kv_events.py``):

- ZMQ PUB multipart ``[topic, seq, payload]``: topic bytes, an 8-byte big-endian sequence number,
  the msgpack payload.
- The payload is a ``KVEventBatch`` encoded as an array ``[ts, events, data_parallel_rank]``
  (the rank is left out when None).
- Each event is a tagged struct, the tag being the class name under the key ``"type"``. Since
  vLLM 0.23 (vllm-project/vllm#42892) an event is a msgpack *map* of field names; older engines
  sent a positional *array* ``["BlockStored", ...]``. `decode_batch` reads both; `encode_batch`
  writes the current map form.
- Replay: a ROUTER socket takes ``[b"", start_seq]`` (8 bytes big-endian) and answers
  ``[b"", topic, seq, payload]`` per buffered batch from ``start_seq`` on, then
  ``[b"", b"", -1, b""]``; vLLM releases before the topic frame was added answer
  ``[b"", seq, payload]`` and ``[b"", -1, b""]``. Subscribers should read both.
"""

from __future__ import annotations

from typing import Any

import msgspec

ExternalBlockHash = bytes | int

MEDIUM_GPU = "GPU"
MEDIUM_CPU = "CPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base of the KV-cache events (map-encoded, tag key ``type``)."""


class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


# Positional (pre-0.23) forms. Trailing fields default to None so that the shorter arrays of
# still older engines (no medium, no lora_name) decode too.
class _ArrayEvent(msgspec.Struct, array_like=True, gc=False, tag=True):
    pass


class _ArrayBlockStored(_ArrayEvent, tag="BlockStored"):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _ArrayBlockRemoved(_ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[ExternalBlockHash]
    medium: str | None = None
    group_idx: int | None = None


class _ArrayAllBlocksCleared(_ArrayEvent, tag="AllBlocksCleared"):
    pass


class _ArrayKVEventBatch(EventBatch):
    events: list[_ArrayBlockStored | _ArrayBlockRemoved | _ArrayAllBlocksCleared]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_array_decoder = msgspec.msgpack.Decoder(_ArrayKVEventBatch)


def encode_batch(batch: KVEventBatch) -> bytes:
    """The msgpack payload vLLM publishes for `batch`."""
    return _encoder.encode(batch)


def _from_array(ev: _ArrayBlockStored | _ArrayBlockRemoved | _ArrayAllBlocksCleared) -> KVEvent:
    if isinstance(ev, _ArrayBlockStored):
        return BlockStored(**msgspec.structs.asdict(ev))
    if isinstance(ev, _ArrayBlockRemoved):
        return BlockRemoved(**msgspec.structs.asdict(ev))
    return AllBlocksCleared()


def decode_batch(payload: bytes) -> KVEventBatch:
    """Decode a payload in either event encoding.

    Raises `msgspec.DecodeError` (a `ValueError`) for anything that is not a KV-event batch.
    """
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError:
        legacy = _array_decoder.decode(payload)
        return KVEventBatch(
            ts=legacy.ts,
            events=[_from_array(e) for e in legacy.events],
            data_parallel_rank=legacy.data_parallel_rank,
        )


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(raw: bytes) -> int:
    if len(raw) != 8:
        raise ValueError(f"sequence frame: expected 8 bytes, got {len(raw)}")
    return int.from_bytes(raw, "big", signed=True)
