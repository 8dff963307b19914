"""Batches -> index operations, and sequence tracking (pure)."""

from __future__ import annotations

import pytest
from llmd_sdk.kvcache.applier import EventApplier, PublisherKey, SeqStatus
from llmd_sdk.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    decode_batch,
    encode_batch,
)
from llmd_sdk.kvcache.hashing import BlockHasher, block_key, to_external
from llmd_sdk.kvcache.index import ClearEndpoint, Holder, InMemoryIndex, RemoveBlocks, StoreBlocks

KEY = PublisherKey("10.0.0.1:8000", "m")


def stored(
    hashes: list[bytes | int], medium: str | None = "GPU", group: int | None = None
) -> BlockStored:
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=None,
        token_ids=list(range(16 * len(hashes))),
        block_size=16,
        lora_id=None,
        medium=medium,
        lora_name=None,
        group_idx=group,
    )


def digests(n: int) -> list[bytes]:
    return BlockHasher().hash_tokens(list(range(16 * n)))


@pytest.mark.parametrize("use_int", [False, True])
def test_both_hash_wire_forms_give_the_same_keys(use_int: bool) -> None:
    ds = digests(4)
    wire = [to_external(d, use_int) for d in ds]
    batch = decode_batch(encode_batch(KVEventBatch(ts=1.0, events=[stored(wire)])))
    ops = EventApplier().ops(KEY, batch)
    assert ops == [StoreBlocks("m", Holder(KEY.endpoint, "GPU", -1), [block_key(d) for d in ds])]


def test_event_kinds_become_operations() -> None:
    ds = digests(3)
    batch = KVEventBatch(
        ts=1.0,
        events=[
            stored(ds, medium=None),
            BlockRemoved(block_hashes=ds[2:], medium="cpu"),
            AllBlocksCleared(),
        ],
        data_parallel_rank=2,
    )
    applier = EventApplier()
    ops = applier.ops(KEY, batch)
    keys = [block_key(d) for d in ds]
    assert ops == [
        StoreBlocks("m", Holder(KEY.endpoint, "GPU", 2), keys),
        RemoveBlocks("m", Holder(KEY.endpoint, "CPU", 2), keys[2:]),
        ClearEndpoint(KEY.endpoint, "m", 2),
    ]
    st = applier.state(KEY)
    assert (st.blocks_stored, st.blocks_removed) == (3, 1)
    assert st.events == {"BlockStored": 1, "BlockRemoved": 1, "AllBlocksCleared": 1}


def test_other_kv_cache_groups_are_skipped() -> None:
    applier = EventApplier()
    ops = applier.ops(KEY, KVEventBatch(ts=0, events=[stored(digests(1), group=1)]))
    assert ops == []
    assert applier.state(KEY).events["skipped_group"] == 1


def test_sequence_statuses() -> None:
    a = EventApplier()
    assert a.observe(KEY, 7) is SeqStatus.FIRST
    a.advance(KEY, 7)
    assert a.observe(KEY, 8) is SeqStatus.IN_ORDER
    assert a.observe(KEY, 10) is SeqStatus.GAP
    assert a.observe(KEY, 3) is SeqStatus.RESTART
    assert a.observe(KEY, 0) is SeqStatus.RESTART


def test_applying_ops_to_an_index_mirrors_the_engine() -> None:
    idx = InMemoryIndex()
    a = EventApplier()
    ds = digests(5)
    idx.apply_sync(a.ops(KEY, KVEventBatch(ts=0, events=[stored(ds)])))
    idx.apply_sync(a.ops(KEY, KVEventBatch(ts=0, events=[BlockRemoved(ds[3:], "GPU")])))
    assert idx.blocks_of_sync("m", KEY.endpoint) == {
        Holder(KEY.endpoint): {block_key(d) for d in ds[:3]}
    }
    idx.apply_sync(a.resync_ops(KEY))
    assert idx.blocks_of_sync("m", KEY.endpoint) == {}
    assert a.state(KEY).resyncs == 1
