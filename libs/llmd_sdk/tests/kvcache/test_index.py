"""The KV-block index suite, run against every backend (in-memory and a real redis-server)."""

from __future__ import annotations

import pytest
from llmd_sdk.kvcache.index import (
    ClearEndpoint,
    Holder,
    InMemoryIndex,
    KVBlockIndex,
    RemoveBlocks,
    StoreBlocks,
)

M = "m"
A_GPU = Holder("10.0.0.1:8000", "GPU", -1)
A_CPU = Holder("10.0.0.1:8000", "CPU", -1)
B_GPU = Holder("10.0.0.2:8000", "GPU", -1)
C_R1 = Holder("10.0.0.3:8000", "GPU", 1)


async def test_lookup_stops_at_the_first_block_nobody_holds(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1, 2, 3]), StoreBlocks(M, A_GPU, [5])])
    got = await index.lookup(M, [1, 2, 3, 4, 5])
    assert [set(h) for h in got] == [{A_GPU}] * 3


async def test_holders_accumulate_per_block(index: KVBlockIndex) -> None:
    await index.apply(
        [StoreBlocks(M, A_GPU, [1, 2]), StoreBlocks(M, B_GPU, [1]), StoreBlocks(M, A_CPU, [2])]
    )
    got = await index.lookup(M, [1, 2])
    assert [set(h) for h in got] == [{A_GPU, B_GPU}, {A_GPU, A_CPU}]
    stats = await index.stats()
    assert (stats.keys, stats.entries) == (2, 4)


async def test_storing_twice_is_idempotent(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1, 2]), StoreBlocks(M, A_GPU, [2, 1])])
    stats = await index.stats()
    assert (stats.keys, stats.entries) == (2, 2)


async def test_models_are_separate_namespaces(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks("a", A_GPU, [1]), StoreBlocks("b", B_GPU, [1])])
    assert [set(h) for h in await index.lookup("a", [1])] == [{A_GPU}]
    assert [set(h) for h in await index.lookup("b", [1])] == [{B_GPU}]
    assert await index.endpoints("a") == [A_GPU.endpoint]
    assert await index.endpoints() == [A_GPU.endpoint, B_GPU.endpoint]


async def test_remove_drops_only_that_holder(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1, 2, 3]), StoreBlocks(M, B_GPU, [1, 2, 3])])
    await index.apply([RemoveBlocks(M, A_GPU, [2]), RemoveBlocks(M, B_GPU, [2, 3])])
    got = await index.lookup(M, [1, 2, 3])
    assert [set(h) for h in got] == [{A_GPU, B_GPU}]  # nobody holds block 2 any more
    assert [set(h) for h in await index.lookup(M, [3])] == [{A_GPU}]
    stats = await index.stats()
    assert (stats.keys, stats.entries) == (2, 3)


async def test_removing_unknown_blocks_is_harmless(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1])])
    await index.apply([RemoveBlocks(M, A_GPU, [9]), RemoveBlocks(M, B_GPU, [1])])
    assert [set(h) for h in await index.lookup(M, [1])] == [{A_GPU}]
    assert (await index.stats()).entries == 1


async def test_remove_on_one_medium_keeps_the_other(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1]), StoreBlocks(M, A_CPU, [1])])
    await index.apply([RemoveBlocks(M, A_GPU, [1])])
    assert [set(h) for h in await index.lookup(M, [1])] == [{A_CPU}]


async def test_clear_endpoint_drops_all_its_mediums_and_keeps_others(index: KVBlockIndex) -> None:
    await index.apply(
        [
            StoreBlocks(M, A_GPU, [1, 2]),
            StoreBlocks(M, A_CPU, [3]),
            StoreBlocks(M, B_GPU, [1]),
            StoreBlocks("other", A_GPU, [1]),
        ]
    )
    await index.apply([ClearEndpoint(A_GPU.endpoint, M)])
    assert [set(h) for h in await index.lookup(M, [1])] == [{B_GPU}]
    assert await index.lookup(M, [2]) == []
    assert await index.lookup(M, [3]) == []
    assert [set(h) for h in await index.lookup("other", [1])] == [{A_GPU}]
    assert await index.blocks_of(M, A_GPU.endpoint) == {}
    stats = await index.stats()
    assert (stats.keys, stats.entries) == (2, 2)


async def test_clear_endpoint_of_all_models(index: KVBlockIndex) -> None:
    await index.apply([StoreBlocks(M, A_GPU, [1]), StoreBlocks("other", A_GPU, [1])])
    await index.clear_endpoint(A_GPU.endpoint)
    assert await index.lookup(M, [1]) == []
    assert await index.lookup("other", [1]) == []
    assert await index.endpoints() == []
    assert (await index.stats()).entries == 0


async def test_clear_one_data_parallel_rank(index: KVBlockIndex) -> None:
    c_r0 = Holder(C_R1.endpoint, "GPU", 0)
    await index.apply([StoreBlocks(M, c_r0, [1]), StoreBlocks(M, C_R1, [1])])
    await index.apply([ClearEndpoint(C_R1.endpoint, M, rank=1)])
    assert [set(h) for h in await index.lookup(M, [1])] == [{c_r0}]


async def test_blocks_of_reports_per_holder(index: KVBlockIndex) -> None:
    big = (1 << 64) - 1
    await index.apply([StoreBlocks(M, A_GPU, [1, big]), StoreBlocks(M, A_CPU, [3])])
    await index.apply([RemoveBlocks(M, A_GPU, [1])])
    assert await index.blocks_of(M, A_GPU.endpoint) == {A_GPU: {big}, A_CPU: {3}}
    assert await index.counts_of(M, A_GPU.endpoint) == {A_GPU: 1, A_CPU: 1}
    assert await index.counts_of(M, "nobody:1") == {}


async def test_equal_consecutive_holder_sets_compare_equal(index: KVBlockIndex) -> None:
    keys = list(range(100, 164))
    await index.apply([StoreBlocks(M, A_GPU, keys), StoreBlocks(M, B_GPU, keys[:40])])
    got = await index.lookup(M, keys)
    assert len(got) == 64
    assert all(set(h) == {A_GPU, B_GPU} for h in got[:40])
    assert all(set(h) == {A_GPU} for h in got[40:])


async def test_empty_lookup(index: KVBlockIndex) -> None:
    assert await index.lookup(M, []) == []
    assert await index.lookup(M, [1, 2]) == []


# -- in-memory only: capacity ------------------------------------------------------------------


async def test_memory_index_evicts_least_recently_used_blocks() -> None:
    idx = InMemoryIndex(capacity=3)
    await idx.apply([StoreBlocks(M, A_GPU, [1, 2, 3])])
    await idx.lookup(M, [1])  # 1 is now the most recently used
    await idx.apply([StoreBlocks(M, B_GPU, [4])])
    assert await idx.lookup(M, [2]) == []
    assert [set(h) for h in await idx.lookup(M, [1])] == [{A_GPU}]
    stats = await idx.stats()
    assert (stats.keys, stats.entries, stats.evictions) == (3, 3, 1)
    assert await idx.blocks_of(M, A_GPU.endpoint) == {A_GPU: {1, 3}}


async def test_memory_index_shares_holder_sets_between_blocks() -> None:
    idx = InMemoryIndex()
    await idx.apply([StoreBlocks(M, A_GPU, [1, 2, 3]), StoreBlocks(M, B_GPU, [1, 2, 3])])
    a, b, c = await idx.lookup(M, [1, 2, 3])
    assert a is b is c


def test_memory_index_rejects_a_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        InMemoryIndex(capacity=0)
