"""Event applier: decoded vLLM KV-event batches of one publisher -> index operations.

Pure (no I/O): the subscriber feeds it what arrived on a socket and applies the operations it
returns to an index, so the same logic runs in kvmanager, inside the EPP, and in simulations.

Sequence numbers. vLLM numbers the batches of each publisher 0, 1, 2, ...; PUB/SUB never reorders
or duplicates, so for the next live batch of a publisher:

- ``seq == expected``: in order.
- ``seq > expected``: batches were lost (the socket's high-water mark, a reconnect): a *gap*.
  The subscriber asks the engine's replay socket for ``expected..``; without one, or when the
  engine's buffer no longer reaches back that far, it *resyncs*: drops the engine's entries.
- ``seq < expected``: the engine restarted (its cache is empty): its entries are dropped, then
  the batch is applied; a restart seen after its first batches is a gap from 0 as well.
- the first batch seen from a publisher sets the baseline (the engine may have been running).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from llmd_sdk.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from llmd_sdk.kvcache.hashing import block_keys
from llmd_sdk.kvcache.index.base import (
    MEDIUM_GPU,
    NO_RANK,
    ClearEndpoint,
    Holder,
    IndexOp,
    RemoveBlocks,
    StoreBlocks,
)


class SeqStatus(enum.Enum):
    FIRST = "first"
    IN_ORDER = "in_order"
    GAP = "gap"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class PublisherKey:
    """Who publishes: the engine's endpoint ("ip:port"), the model its events are about, and its
    data-parallel rank (each rank of a vLLM data-parallel engine publishes its own sequence)."""

    endpoint: str
    model: str
    rank: int = NO_RANK

    def clear(self) -> ClearEndpoint:
        """The operation dropping everything this publisher put in the index."""
        return ClearEndpoint(self.endpoint, self.model, None if self.rank == NO_RANK else self.rank)


@dataclass(slots=True)
class PublisherState:
    """Ingestion bookkeeping of one publisher."""

    key: PublisherKey
    expected: int | None = None
    last_seq: int = -1
    batches: int = 0
    events: Counter[str] = field(default_factory=Counter)
    blocks_stored: int = 0
    blocks_removed: int = 0
    gaps: int = 0
    resyncs: int = 0
    restarts: int = 0
    last_ts: float = 0.0


class EventApplier:
    """Turns batches into `IndexOp` lists and tracks each publisher's sequence numbers.

    `groups`: the KV-cache group indices (``group_idx``) to index; events of other groups (the
    sliding-window groups of hybrid models) are counted under ``skipped_group`` and not indexed.
    `None` in the set stands for events without a ``group_idx``.
    """

    def __init__(self, groups: frozenset[int | None] = frozenset({None, 0})) -> None:
        self.groups = groups
        self.publishers: dict[PublisherKey, PublisherState] = {}
        self._holders: dict[tuple[str, str, int], Holder] = {}

    def state(self, key: PublisherKey) -> PublisherState:
        st = self.publishers.get(key)
        if st is None:
            st = self.publishers[key] = PublisherState(key)
        return st

    def forget(self, key: PublisherKey) -> None:
        """Stop tracking a publisher (it left the pool)."""
        self.publishers.pop(key, None)

    def observe(self, key: PublisherKey, seq: int) -> SeqStatus:
        """Classify live sequence number `seq` (does not advance: see `advance`)."""
        expected = self.state(key).expected
        if expected is None:
            return SeqStatus.FIRST
        if seq == expected:
            return SeqStatus.IN_ORDER
        if seq > expected:
            return SeqStatus.GAP
        return SeqStatus.RESTART

    def advance(self, key: PublisherKey, seq: int) -> None:
        st = self.state(key)
        st.expected = seq + 1
        st.last_seq = seq

    def resync_ops(self, key: PublisherKey) -> list[IndexOp]:
        """Drop everything the index has for this publisher (counted as a resync)."""
        self.state(key).resyncs += 1
        return [key.clear()]

    def restart_ops(self, key: PublisherKey) -> list[IndexOp]:
        self.state(key).restarts += 1
        return [key.clear()]

    def _holder(self, endpoint: str, medium: str | None, rank: int) -> Holder:
        m = MEDIUM_GPU if medium is None else medium.upper()
        t = (endpoint, m, rank)
        h = self._holders.get(t)
        if h is None:
            h = self._holders[t] = Holder(endpoint, m, rank)
        return h

    def ops(self, key: PublisherKey, batch: KVEventBatch) -> list[IndexOp]:
        """The index operations of one batch, counting its events."""
        st = self.state(key)
        st.batches += 1
        st.last_ts = batch.ts
        endpoint, model = key.endpoint, key.model
        rank = NO_RANK if batch.data_parallel_rank is None else batch.data_parallel_rank
        groups = self.groups
        out: list[IndexOp] = []
        counts = st.events
        for ev in batch.events:
            t = type(ev)
            if t is BlockStored or t is BlockRemoved:
                assert isinstance(ev, BlockStored | BlockRemoved)
                name = t.__name__
                if ev.group_idx not in groups:
                    counts["skipped_group"] += 1
                    continue
                counts[name] += 1
                keys = block_keys(ev.block_hashes)
                holder = self._holder(endpoint, ev.medium, rank)
                if t is BlockStored:
                    st.blocks_stored += len(keys)
                    out.append(StoreBlocks(model, holder, keys))
                else:
                    st.blocks_removed += len(keys)
                    out.append(RemoveBlocks(model, holder, keys))
            elif t is AllBlocksCleared:
                counts["AllBlocksCleared"] += 1
                out.append(ClearEndpoint(endpoint, model, None if rank == NO_RANK else rank))
        return out
