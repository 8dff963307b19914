from __future__ import annotations

import pytest
from llmd_sdk.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sim.engine import KVCacheManager, Request
from llmd_sim.engine.kv_cache import ComputedBlocks

BS = 4


def kv(blocks: int = 9, cpu: int = 0) -> KVCacheManager:
    return KVCacheManager(blocks, BlockHasher("sha256", BS), enable_events=True, cpu_blocks=cpu)


def req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, [0])


def admit(m: KVCacheManager, r: Request) -> ComputedBlocks:
    computed = m.get_computed_blocks(r, r.num_tokens)
    assert m.allocate_slots(r, r.num_tokens - computed.num_blocks * BS, computed)
    r.num_computed_tokens = r.num_tokens
    return computed


def test_null_block_is_reserved_and_usage_counts_referenced_blocks() -> None:
    m = kv(9)
    assert m.num_usable_blocks == 8 and m.num_free_blocks == 8 and m.usage == 0.0
    r = req("a", list(range(10)))  # 3 blocks, 2 full
    admit(m, r)
    assert 0 not in r.blocks and len(r.blocks) == 3
    assert m.usage == 3 / 8
    stored = m.take_events()
    assert len(stored) == 1 and isinstance(stored[0], BlockStored)
    assert stored[0].block_hashes == r.block_hashes[:2] and stored[0].token_ids == list(range(8))


def test_freed_blocks_stay_hits_until_reallocated_tail_first() -> None:
    m = kv(5)  # 4 usable blocks
    a = req("a", list(range(17)))  # 4 full blocks + 1 token -> 5 blocks? no: needs 5, too many
    assert not m.allocate_slots(a, 17)
    a = req("a", list(range(16)))  # exactly 4 blocks, 3 cacheable (one token must be computed)
    admit(m, a)
    hashes = list(a.block_hashes)
    m.free_request(a)
    m.take_events()
    # All four are free again but the full ones are still cached.
    assert m.num_free_blocks == 4 and m.cached_prefix_blocks(hashes) == 4
    # A new request needing one block evicts the *tail* block of `a` first.
    b = req("b", [99, 98, 97, 96])
    admit(m, b)
    removed = [e for e in m.take_events() if isinstance(e, BlockRemoved)]
    assert [e.block_hashes for e in removed] == [[hashes[3]]]
    assert m.cached_prefix_blocks(hashes) == 3


def test_prefix_hit_touches_blocks_out_of_the_free_queue() -> None:
    m = kv(9)
    a = req("a", list(range(13)))
    admit(m, a)
    m.free_request(a)
    b = req("b", list(range(13)))
    m.take_events()
    computed = admit(m, b)
    assert computed.gpu_blocks == a.blocks[:3] if a.blocks else len(computed.gpu_blocks) == 3
    assert len(computed.gpu_blocks) == 3
    assert m.ref_cnt[computed.gpu_blocks[0]] == 1
    assert all(blk not in m.free for blk in b.blocks)
    # The hit blocks are not stored again; the 4th (partial) block is fresh and unhashed.
    assert m.take_events() == []
    assert m.block_hash[b.blocks[3]] is None


def test_two_requests_caching_the_same_block_and_eviction_events() -> None:
    m = kv(9)
    a, b = req("a", list(range(5))), req("b", list(range(5)))
    # Both looked up before either was cached (e.g. identical decoded blocks): two copies.
    lookups = [m.get_computed_blocks(r, 5) for r in (a, b)]
    assert all(c.num_blocks == 0 for c in lookups)
    for r, c in zip((a, b), lookups, strict=True):
        assert m.allocate_slots(r, 5, c)
    events = m.take_events()
    assert [e.block_hashes for e in events] == [[a.block_hashes[0]], [a.block_hashes[0]]]
    m.free_request(a)
    m.free_request(b)
    # Fill the cache with new blocks: both duplicates get evicted, one event each (as vLLM does).
    c = req("c", list(range(100, 132)))
    admit(m, c)
    removed = [e.block_hashes[0] for e in m.take_events() if isinstance(e, BlockRemoved)]
    assert removed.count(a.block_hashes[0]) == 2
    assert a.block_hashes[0] not in m.cached


def test_reset_clears_only_when_idle() -> None:
    m = kv(9)
    a = req("a", list(range(9)))
    admit(m, a)
    assert not m.reset()
    m.free_request(a)
    m.take_events()
    assert m.reset()
    assert m.take_events() == [AllBlocksCleared()]
    assert m.cached_prefix_blocks(a.block_hashes) == 0


def test_cpu_tier_keeps_evicted_blocks_and_serves_them_back() -> None:
    m = kv(5, cpu=2)
    a = req("a", list(range(16)))
    admit(m, a)
    hashes = list(a.block_hashes)
    m.free_request(a)
    m.take_events()
    b = req("b", list(range(200, 216)))
    admit(m, b)  # needs all 4 blocks: evicts a's 4 cached blocks, tail first
    events = m.take_events()
    cpu_stored = [e for e in events if isinstance(e, BlockStored) and e.medium == "CPU"]
    cpu_removed = [e for e in events if isinstance(e, BlockRemoved) and e.medium == "CPU"]
    gpu_removed = [e for e in events if isinstance(e, BlockRemoved) and e.medium == "GPU"]
    assert len(gpu_removed) == 4 and len(cpu_stored) == 4 and len(cpu_removed) == 2
    # CPU holds the two most recently evicted: blocks 1 and 0 of `a` (tail evicted first).
    assert set(m.cpu) == {hashes[0], hashes[1]}
    stored0 = next(e for e in cpu_stored if e.block_hashes == [hashes[0]])
    assert stored0.token_ids == list(range(4)) and stored0.parent_block_hash is None
    m.free_request(b)
    c = req("c", list(range(16)))
    computed = m.get_computed_blocks(c, c.num_tokens)
    assert computed.gpu_blocks == [] and computed.cpu_hashes == hashes[:2]


@pytest.mark.parametrize("slack", [16, 10**9])
def test_free_queue_order_survives_lazy_deletion_and_compaction(slack: int) -> None:
    """The free queue behaves as an ordered set with removal, whatever its stale entries.

    A shadow OrderedDict is updated from what vLLM's queue does (append on release, remove on a
    prefix-hit touch, pop from the head on allocation); touch/release cycles leave stale
    entries that pops must skip and compactions must drop without reordering live ones.
    """
    import random
    from collections import OrderedDict

    rnd = random.Random(4)
    n_blocks = 400
    m = KVCacheManager(n_blocks, BlockHasher("sha256", BS))
    m._compact_slack = slack  # 16: compact often; 10**9: never, pops meet every stale entry
    shadow: OrderedDict[int, None] = OrderedDict()
    prompts = [[p * 100 + t for t in range(rnd.randrange(5, 30))] for p in range(6)]
    live: list[Request] = []
    compactions = 0
    compact = m._compact_free_queue

    def counting_compact() -> None:
        nonlocal compactions
        compactions += 1
        compact()

    m._compact_free_queue = counting_compact  # type: ignore[method-assign]
    for i in range(3000):
        if live and (rnd.random() < 0.5 or len(live) > 3):
            r = live.pop(rnd.randrange(len(live)))
            blocks = list(r.blocks)
            m.free_request(r)
            for b in reversed(blocks):
                if m.ref_cnt[b] == 0:
                    shadow[b] = None
        else:
            unique = [9000 + i] * rnd.randrange(1, 12)
            # First only shared prompts (touch/release cycles pile up stale entries while
            # never-used blocks last), then also unique ones (exhaust them, pop the queue).
            tokens = unique if i >= 1500 and rnd.random() < 0.3 else list(rnd.choice(prompts))
            r = Request(f"r{i}", tokens, [0])
            computed = m.get_computed_blocks(r, r.num_tokens)
            need = r.num_tokens - computed.num_blocks * BS
            if not m.allocate_slots(r, need, computed):
                continue
            r.num_computed_tokens = r.num_tokens
            for b in computed.gpu_blocks:
                shadow.pop(b, None)  # touched out of the queue
            fresh = r.blocks[len(computed.gpu_blocks) :]
            reused = [b for b in fresh if b in shadow]
            assert reused == list(shadow)[: len(reused)], "pops must come from the head"
            for b in reused:
                del shadow[b]
            live.append(r)
        assert m.free == list(shadow)
        assert m.num_free_blocks == n_blocks - m._virgin + len(shadow)
    # Both regimes happened: stale entries piled up while never-used blocks lasted (compaction),
    # then allocations popped through the queue.
    assert (compactions > 0) == (slack == 16) and m._virgin == n_blocks and i == 2999


@pytest.mark.parametrize("lora", [None, "ad"])
@pytest.mark.parametrize("salt", [None, "s"])
@pytest.mark.parametrize("index", [0, 1, 7])
def test_fast_hasher_one_block_equals_its_chained_hash(
    lora: str | None, salt: str | None, index: int
) -> None:
    from llmd_sim.engine import FastBlockHasher

    h = FastBlockHasher(BS)
    block = [5, 6, 7, 8]
    for parent in (None, 12345):
        want = h.hash_tokens(
            block, lora_name=lora, cache_salt=salt, parent=parent, start_block=index
        )
        assert h.hash_block_at(parent, block, index, lora, salt) == want[0]
    # And chaining block by block reproduces a whole-sequence hash.
    seq = list(range(40, 40 + 3 * BS))
    whole = h.hash_tokens(seq, lora_name=lora, cache_salt=salt)
    prev = None
    for i in range(3):
        prev = h.hash_block_at(prev, seq[i * BS : (i + 1) * BS], i, lora, salt)
        assert prev == whole[i]
