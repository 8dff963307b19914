"""In-process KV-block index: bounded, least-recently-used by block.

Layout, chosen for the two hot paths (ingesting block events, prefix lookups of ~512 keys):

- ``_blocks``: an insertion-ordered dict ``(model, key) -> frozenset[Holder]`` used as the LRU
  (a store or a lookup hit moves the block to the young end; past `capacity` the oldest goes).
- Holder sets are interned: every block held by the same engines shares one frozenset object.
  A long shared prefix is then a run of identical objects, which the scorer walks in O(1) per
  block, and a block costs one pointer instead of its own set.
- ``_rev``: ``(model, holder) -> keys``, so that dropping an engine (``AllBlocksCleared``,
  a resync, leaving the pool) touches only that engine's blocks. The key collections are dicts
  of ints, not sets: CPython does not track such dicts in its cyclic garbage collector, whereas
  a full collection walks every element of a set (0.6 s for 4M keys).

Garbage-collector pauses: the LRU dict itself is one tracked container, walked by every full
collection (~50 ms per million blocks). A process holding a large index should call
``gc.freeze()`` once the index is built (kvmanager does after start-up) so that full
collections skip it.

No I/O and no locks: it belongs to one event loop (or one simulator thread). The async methods
of `KVBlockIndex` wrap the synchronous ``*_sync`` ones, which callers on the loop may use directly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from llmd_sdk.kvcache.index.base import (
    ClearEndpoint,
    Holder,
    HolderSet,
    IndexOp,
    IndexStats,
    KVBlockIndex,
    RemoveBlocks,
    StoreBlocks,
)

DEFAULT_CAPACITY = 1_000_000
# Interning tables are caches: past this many transitions they start over (sets stay valid).
_MAX_TRANSITIONS = 1 << 16
_EMPTY: frozenset[Holder] = frozenset()


class InMemoryIndex(KVBlockIndex):
    """Bounded in-memory index; `capacity` counts distinct (model, block) keys."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, touch_on_lookup: bool = True) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity: must be positive, got {capacity}")
        self.capacity = capacity
        self.touch_on_lookup = touch_on_lookup
        self._blocks: OrderedDict[tuple[str, int], frozenset[Holder]] = OrderedDict()
        self._rev: dict[tuple[str, Holder], dict[int, None]] = {}
        self._entries = 0
        self._evictions = 0
        self._intern: dict[frozenset[Holder], frozenset[Holder]] = {}
        self._plus: dict[tuple[frozenset[Holder], Holder], frozenset[Holder]] = {}
        self._minus: dict[tuple[frozenset[Holder], Holder], frozenset[Holder]] = {}

    # -- interning ---------------------------------------------------------------------------

    def _canon(self, hs: frozenset[Holder]) -> frozenset[Holder]:
        return self._intern.setdefault(hs, hs)

    def _reset_tables(self) -> None:
        self._intern.clear()
        self._plus.clear()
        self._minus.clear()

    def _with(self, hs: frozenset[Holder], holder: Holder) -> frozenset[Holder]:
        t = (hs, holder)
        out = self._plus.get(t)
        if out is None:
            if len(self._plus) >= _MAX_TRANSITIONS:
                self._reset_tables()
            out = self._canon(hs | {holder})
            self._plus[t] = out
        return out

    def _without(self, hs: frozenset[Holder], holder: Holder) -> frozenset[Holder]:
        t = (hs, holder)
        out = self._minus.get(t)
        if out is None:
            if len(self._minus) >= _MAX_TRANSITIONS:
                self._reset_tables()
            out = self._canon(hs - {holder})
            self._minus[t] = out
        return out

    # -- writes -------------------------------------------------------------------------------

    def apply_sync(self, ops: Sequence[IndexOp]) -> None:
        """Apply `ops` in order."""
        for op in ops:
            if type(op) is StoreBlocks:
                self._store(op.model, op.holder, op.keys)
            elif type(op) is RemoveBlocks:
                self._remove(op.model, op.holder, op.keys)
            elif type(op) is ClearEndpoint:
                self._clear(op.endpoint, op.model, op.rank)
            else:
                raise TypeError(f"unknown index op {type(op).__name__}")

    def _store(self, model: str, holder: Holder, keys: Sequence[int]) -> None:
        blocks = self._blocks
        rk = (model, holder)
        rev = self._rev.get(rk)
        if rev is None:
            rev = self._rev[rk] = {}
        single = self._with(_EMPTY, holder)
        get, move = blocks.get, blocks.move_to_end
        added = 0
        for k in keys:
            bk = (model, k)
            hs = get(bk)
            if hs is None:
                blocks[bk] = single
                added += 1
            else:
                if holder not in hs:
                    blocks[bk] = self._with(hs, holder)
                    added += 1
                move(bk)
            rev[k] = None
        self._entries += added
        if len(blocks) > self.capacity:
            self._evict(len(blocks) - self.capacity)

    def _evict(self, n: int) -> None:
        blocks, rev = self._blocks, self._rev
        for _ in range(n):
            (model, k), hs = blocks.popitem(last=False)
            for h in hs:
                s = rev.get((model, h))
                if s is not None:
                    s.pop(k, None)
            self._entries -= len(hs)
        self._evictions += n

    def _remove(self, model: str, holder: Holder, keys: Sequence[int]) -> None:
        rev = self._rev.get((model, holder))
        if rev is not None:
            self._drop(model, holder, keys, rev)

    def _drop(self, model: str, holder: Holder, keys: Iterable[int], rev: dict[int, None]) -> None:
        blocks = self._blocks
        get = blocks.get
        removed = 0
        for k in keys:
            bk = (model, k)
            hs = get(bk)
            if hs is None or holder not in hs:
                continue
            rest = self._without(hs, holder)
            if rest:
                blocks[bk] = rest
            else:
                del blocks[bk]
            rev.pop(k, None)
            removed += 1
        self._entries -= removed

    def _clear(self, endpoint: str, model: str | None, rank: int | None) -> None:
        targets = [
            rk
            for rk in self._rev
            if rk[1].endpoint == endpoint
            and (model is None or rk[0] == model)
            and (rank is None or rk[1].rank == rank)
        ]
        for rk in targets:
            keys = self._rev.pop(rk)
            self._drop(rk[0], rk[1], keys, {})

    # -- reads --------------------------------------------------------------------------------

    def lookup_sync(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        """Holder sets of the leading held keys (see `KVBlockIndex.lookup`)."""
        get = self._blocks.get
        out: list[HolderSet] = []
        append = out.append
        for k in keys:
            hs = get((model, k))
            if hs is None:
                break
            append(hs)
        if self.touch_on_lookup and out:
            move = self._blocks.move_to_end
            for k in keys[: len(out)]:
                move((model, k))
        return out

    def endpoints_sync(self, model: str | None = None) -> list[str]:
        return sorted(
            {h.endpoint for (m, h), keys in self._rev.items() if keys and model in (None, m)}
        )

    def blocks_of_sync(self, model: str, endpoint: str) -> dict[Holder, set[int]]:
        return {
            h: set(keys)
            for (m, h), keys in self._rev.items()
            if m == model and h.endpoint == endpoint and keys
        }

    def counts_of_sync(self, model: str, endpoint: str) -> dict[Holder, int]:
        return {
            h: len(keys)
            for (m, h), keys in self._rev.items()
            if m == model and h.endpoint == endpoint and keys
        }

    def stats_sync(self) -> IndexStats:
        return IndexStats(keys=len(self._blocks), entries=self._entries, evictions=self._evictions)

    # -- KVBlockIndex ---------------------------------------------------------------------------

    async def apply(self, ops: Sequence[IndexOp]) -> None:
        self.apply_sync(ops)

    async def lookup(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        return self.lookup_sync(model, keys)

    async def endpoints(self, model: str | None = None) -> list[str]:
        return self.endpoints_sync(model)

    async def blocks_of(self, model: str, endpoint: str) -> dict[Holder, set[int]]:
        return self.blocks_of_sync(model, endpoint)

    async def counts_of(self, model: str, endpoint: str) -> dict[Holder, int]:
        return self.counts_of_sync(model, endpoint)

    async def stats(self) -> IndexStats:
        return self.stats_sync()
