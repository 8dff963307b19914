"""ZMQ ingestion against a real publisher: both socket layouts, gaps, replay, resync, malformed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import zmq
from llmd_sdk.kvcache.applier import PublisherKey
from llmd_sdk.kvcache.events import BlockRemoved, BlockStored, KVEventBatch
from llmd_sdk.kvcache.hashing import BlockHasher, block_key, to_external
from llmd_sdk.kvcache.index import Holder, IndexOp, InMemoryIndex, KVBlockIndex
from llmd_sdk.kvcache.publisher import KVEventPublisher
from llmd_sdk.kvcache.subscriber import EngineSource, KVEventSubscriber, SubscriberConfig

pytestmark = pytest.mark.integration

EP = "10.0.0.1:8000"
MODEL = "m"
HASHER = BlockHasher(block_size=4)


async def eventually(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


async def eventually_async(pred: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


def chain(seed: int, n: int) -> list[bytes]:
    return HASHER.hash_tokens([seed * 1000 + i for i in range(4 * n)])


def stored(ds: Sequence[bytes | int], medium: str = "GPU") -> BlockStored:
    return BlockStored(
        block_hashes=list(ds),
        parent_block_hash=None,
        token_ids=list(range(4 * len(ds))),
        block_size=4,
        lora_id=None,
        medium=medium,
        lora_name=None,
    )


def batch(*events: BlockStored | BlockRemoved, rank: int | None = None) -> KVEventBatch:
    return KVEventBatch(ts=time.time(), events=list(events), data_parallel_rank=rank)


def keys(ds: Sequence[bytes]) -> set[int]:
    return {block_key(d) for d in ds}


async def handshake(pub: KVEventPublisher, sub: KVEventSubscriber) -> None:
    """PUB/SUB drops what is sent before the subscription lands: send empty batches until one
    arrives (they only advance the sequence)."""
    before = sub.counters.batches
    deadline = time.monotonic() + 5
    while sub.counters.batches == before:
        if time.monotonic() > deadline:
            raise AssertionError("subscriber never received a batch")
        pub.publish(batch())
        await asyncio.sleep(0.02)


async def held(index: KVBlockIndex, endpoint: str = EP) -> dict[Holder, set[int]]:
    return await index.blocks_of(MODEL, endpoint)


@pytest.fixture
async def mem(index: KVBlockIndex) -> KVBlockIndex:
    """Ingestion runs against every backend."""
    return index


@pytest.fixture
async def subscriber(mem: KVBlockIndex) -> AsyncIterator[KVEventSubscriber]:
    sub = KVEventSubscriber(mem, SubscriberConfig(replay_timeout_s=1.0))
    await sub.start()
    yield sub
    await sub.stop()


@pytest.fixture
def engine() -> AsyncIterator[KVEventPublisher]:
    pub = KVEventPublisher(
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", topic=f"kv@{EP}@{MODEL}", bind=True
    )
    yield pub  # type: ignore[misc]
    pub.close()


async def connect(sub: KVEventSubscriber, pub: KVEventPublisher, replay: bool = True) -> None:
    await sub.add_engine(
        EngineSource(EP, pub.endpoint, MODEL, pub.replay_endpoint if replay else None)
    )
    await handshake(pub, sub)


async def test_engine_binds_and_the_index_follows_stores_and_removals(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex
) -> None:
    await connect(subscriber, engine)
    a = chain(1, 6)
    engine.publish(batch(stored(a)))
    engine.publish(batch(BlockRemoved(a[4:], "GPU"), stored(a[:2], "CPU")))
    want = {Holder(EP, "GPU"): keys(a[:4]), Holder(EP, "CPU"): keys(a[:2])}
    await eventually_async(lambda: _eq(held(mem), want))
    assert subscriber.counters.gaps == 0


async def _eq(got: Awaitable[dict[Holder, set[int]]], want: dict[Holder, set[int]]) -> bool:
    return await got == want


@pytest.mark.parametrize("use_int", [False, True])
async def test_both_hash_forms_on_the_wire(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex, use_int: bool
) -> None:
    await connect(subscriber, engine)
    a = chain(2, 3)
    engine.publish(batch(stored([to_external(d, use_int) for d in a])))
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))


async def test_engines_connect_to_a_bound_socket_identity_from_topic(mem: KVBlockIndex) -> None:
    sub = KVEventSubscriber(mem, SubscriberConfig(bind="tcp://127.0.0.1:0"))
    await sub.start()
    assert sub.bound_address is not None
    pubs = [
        KVEventPublisher(sub.bound_address, topic=f"kv@10.0.0.{i}:8000@{MODEL}", bind=False)
        for i in (1, 2)
    ]
    try:
        for p in pubs:
            await handshake(p, sub)
        a, b = chain(3, 2), chain(4, 3)
        pubs[0].publish(batch(stored(a), rank=0))
        pubs[1].publish(batch(stored(b)))
        await eventually_async(
            lambda: _eq(held(mem, "10.0.0.1:8000"), {Holder("10.0.0.1:8000", "GPU", 0): keys(a)})
        )
        await eventually_async(
            lambda: _eq(held(mem, "10.0.0.2:8000"), {Holder("10.0.0.2:8000"): keys(b)})
        )
        assert await mem.endpoints(MODEL) == ["10.0.0.1:8000", "10.0.0.2:8000"]
    finally:
        for p in pubs:
            p.close()
        await sub.stop()


@pytest.mark.parametrize("replay_topic", [True, False], ids=["topic-replies", "older-replies"])
async def test_a_gap_is_filled_from_the_replay_socket(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex, replay_topic: bool
) -> None:
    engine.replay_topic = replay_topic
    await connect(subscriber, engine)
    a, b, c = chain(5, 2), chain(6, 2), chain(7, 2)
    engine.publish(batch(stored(a)))
    engine.publish(batch(stored(b)), lose=True)
    engine.publish(batch(BlockRemoved(a[1:], "GPU")), lose=True)
    engine.publish(batch(stored(c)))
    want = {Holder(EP): keys(a[:1]) | keys(b) | keys(c)}
    await eventually_async(lambda: _eq(held(mem), want))
    assert (subscriber.counters.gaps, subscriber.counters.replays) == (1, 1)
    assert subscriber.counters.resyncs == 0
    assert subscriber.applier.state(PublisherKey(EP, MODEL)).expected == engine.seq


async def test_a_gap_without_replay_resyncs_the_engine(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex
) -> None:
    await connect(subscriber, engine, replay=False)
    a, b, c = chain(8, 2), chain(9, 2), chain(10, 2)
    engine.publish(batch(stored(a)))
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))
    engine.publish(batch(stored(b)), lose=True)
    engine.publish(batch(stored(c)))
    # What came before the gap can no longer be trusted: dropped; the new batch applies.
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(c)}))
    assert (subscriber.counters.gaps, subscriber.counters.resyncs) == (1, 1)
    assert subscriber.applier.state(PublisherKey(EP, MODEL)).resyncs == 1


async def test_a_gap_older_than_the_replay_buffer_resyncs(mem: KVBlockIndex) -> None:
    sub = KVEventSubscriber(mem, SubscriberConfig(replay_timeout_s=1.0))
    await sub.start()
    pub = KVEventPublisher(
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", topic="t", bind=True, buffer_steps=2
    )
    try:
        await connect(sub, pub)
        a = chain(11, 2)
        pub.publish(batch(stored(a)))
        for i in range(5):
            pub.publish(batch(stored(chain(20 + i, 1))), lose=True)
        c = chain(12, 1)
        pub.publish(batch(stored(c)))
        await eventually(lambda: sub.counters.resyncs == 1)
        assert sub.counters.replays == 0
        await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(c)}))
    finally:
        pub.close()
        await sub.stop()


async def test_an_engine_restart_drops_its_entries(
    subscriber: KVEventSubscriber, mem: KVBlockIndex
) -> None:
    pub = KVEventPublisher("tcp://127.0.0.1:0", topic="t", bind=True)
    address = pub.endpoint
    await subscriber.add_engine(EngineSource(EP, address, MODEL))
    await handshake(pub, subscriber)
    a = chain(13, 3)
    pub.publish(batch(stored(a)))
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))
    # A long history, so that the new incarnation's numbers stay below it for a while.
    for _ in range(1000):
        pub.publish(batch())
    await eventually(lambda: subscriber.applier.state(PublisherKey(EP, MODEL)).expected == pub.seq)
    pub.close()
    # The engine comes back on the same address with a fresh cache and sequence 0 (the old
    # socket releases the port asynchronously).
    deadline = time.monotonic() + 5
    while True:
        try:
            pub = KVEventPublisher(address, topic="t", bind=True)
            break
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "port never released"
            await asyncio.sleep(0.02)
    try:
        b = chain(14, 1)
        deadline = time.monotonic() + 5
        while subscriber.applier.state(PublisherKey(EP, MODEL)).restarts == 0:
            assert time.monotonic() < deadline, "restart never seen"
            pub.publish(batch(stored(b)))  # the first ones may go before the SUB reconnects
            await asyncio.sleep(0.02)
        await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(b)}))
    finally:
        pub.close()


async def test_malformed_messages_are_counted_and_skipped(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex
) -> None:
    await connect(subscriber, engine)
    engine.send_raw([b"t", b"\x00"])  # two frames
    engine.send_raw([b"t", b"\x00" * 3, b"\x90"])  # bad sequence frame
    engine.publish(b"\xc1 not msgpack")  # bad payload (consumes a sequence number)
    a = chain(15, 2)
    engine.publish(batch(stored(a)))
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))
    assert subscriber.counters.malformed == {"frames": 1, "sequence": 1, "payload": 1}
    assert subscriber.counters.gaps == 0


async def test_unknown_topics_in_bind_mode_are_malformed(mem: KVBlockIndex) -> None:
    sub = KVEventSubscriber(mem, SubscriberConfig(bind="tcp://127.0.0.1:0", topic_filter=""))
    await sub.start()
    assert sub.bound_address is not None
    pub = KVEventPublisher(sub.bound_address, topic="no-identity-here", bind=False)
    try:
        await eventually(
            lambda: (pub.publish(batch()), sub.counters.malformed.get("topic", 0) > 0)[1]
        )
    finally:
        pub.close()
        await sub.stop()


async def test_leaving_the_pool_purges_and_stops_listening(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex
) -> None:
    await connect(subscriber, engine)
    a = chain(16, 2)
    engine.publish(batch(stored(a)))
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))
    await subscriber.remove_engine(EP)
    assert await held(mem) == {}
    assert subscriber.engines == []
    received = subscriber.counters.received
    engine.publish(batch(stored(chain(17, 1))))
    await asyncio.sleep(0.1)  # nothing can arrive: the socket is closed
    assert subscriber.counters.received == received
    assert await held(mem) == {}


class _GatedIndex(InMemoryIndex):
    """Holds every write of one endpoint until released: a slow backend shard."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.gate = asyncio.Event()

    async def apply(self, ops: Sequence[IndexOp]) -> None:
        if any(getattr(op, "holder", None) and op.holder.endpoint == self.slow for op in ops):  # type: ignore[union-attr]
            await self.gate.wait()
        self.apply_sync(ops)


async def test_a_slow_engine_does_not_stall_the_others() -> None:
    idx = _GatedIndex("10.0.0.1:8000")
    sub = KVEventSubscriber(idx, SubscriberConfig(bind="tcp://127.0.0.1:0", shards=2, queue_size=8))
    await sub.start()
    assert sub.bound_address is not None
    # Pick a fast engine whose publisher lands on the other shard.
    fast = next(
        f"10.0.1.{i}:8000"
        for i in range(100)
        if hash(PublisherKey(f"10.0.1.{i}:8000", MODEL)) % 2
        != hash(PublisherKey(idx.slow, MODEL)) % 2
    )
    slow_pub = KVEventPublisher(sub.bound_address, topic=f"kv@{idx.slow}@{MODEL}", bind=False)
    fast_pub = KVEventPublisher(sub.bound_address, topic=f"kv@{fast}@{MODEL}", bind=False)
    try:
        await handshake(fast_pub, sub)
        for i in range(50):  # more than the slow shard's queue holds
            slow_pub.publish(batch(stored(chain(100 + i, 1))))
        b = chain(200, 3)
        fast_pub.publish(batch(stored(b)))
        await eventually_async(lambda: _eq(idx.blocks_of(MODEL, fast), {Holder(fast): keys(b)}))
        assert await idx.blocks_of(MODEL, idx.slow) == {}
        await eventually(lambda: sub.counters.dropped.get("queue_full", 0) > 0)
        idx.gate.set()
        await eventually_async(lambda: _has_blocks(idx, idx.slow))
    finally:
        slow_pub.close()
        fast_pub.close()
        await sub.stop()


async def _has_blocks(idx: KVBlockIndex, endpoint: str) -> bool:
    return bool(await idx.blocks_of(MODEL, endpoint))


async def test_joining_late_catches_up_from_the_replay_buffer(
    subscriber: KVEventSubscriber, engine: KVEventPublisher, mem: KVBlockIndex
) -> None:
    a = chain(30, 3)
    engine.publish(batch(stored(a)), lose=True)  # before anyone listened
    await connect(subscriber, engine)  # the first batch seen has seq >= 1
    await eventually_async(lambda: _eq(held(mem), {Holder(EP): keys(a)}))
    assert subscriber.counters.joins == 1
    assert (subscriber.counters.gaps, subscriber.counters.resyncs) == (0, 0)


class _FailOnce(InMemoryIndex):
    """The backend fails one write (a Redis hiccup)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def apply(self, ops: Sequence[IndexOp]) -> None:
        if self.fail_next and ops:
            self.fail_next = False
            self.apply_sync(ops[:1])  # half applied, then the error
            raise ConnectionError("backend went away")
        self.apply_sync(ops)


async def test_a_failed_write_resyncs_the_engine_on_its_next_batch() -> None:
    idx = _FailOnce()
    sub = KVEventSubscriber(idx)
    pub = KVEventPublisher("tcp://127.0.0.1:0", topic="t", bind=True)
    try:
        await sub.add_engine(EngineSource(EP, pub.endpoint, MODEL))
        await handshake(pub, sub)
        a, b, c = chain(40, 2), chain(41, 2), chain(42, 2)
        pub.publish(batch(stored(a)))
        await eventually_async(lambda: _eq(idx.blocks_of(MODEL, EP), {Holder(EP): keys(a)}))
        idx.fail_next = True
        pub.publish(batch(stored(b), BlockRemoved(a, "GPU")))  # only its first op lands
        await eventually(lambda: sub.counters.errors == 1)
        pub.publish(batch(stored(c)))
        # The engine's state is unknown after the failure: dropped, rebuilt from what follows.
        await eventually_async(lambda: _eq(idx.blocks_of(MODEL, EP), {Holder(EP): keys(c)}))
        assert sub.counters.resyncs == 1
    finally:
        pub.close()
        await sub.stop()


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (data-parallel rank 1 replays on base + 1)."""
    import socket

    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
                return p
    raise RuntimeError("no two consecutive free ports")


async def test_data_parallel_ranks_keep_their_own_sequences(mem: KVBlockIndex) -> None:
    replay_base, bind_base = _two_free_ports(), _two_free_ports()
    sub = KVEventSubscriber(
        mem,
        SubscriberConfig(
            bind=f"tcp://127.0.0.1:{bind_base}",
            bind_ranks=2,
            replay_addresses={EP: f"tcp://127.0.0.1:{replay_base}"},
            replay_timeout_s=1.0,
        ),
    )
    await sub.start()
    topic = f"kv@{EP}@{MODEL}"
    # vLLM's rank r connects to the configured port + r and replays on its replay port + r.
    ranks = [
        KVEventPublisher(
            f"tcp://127.0.0.1:{bind_base + r}",
            f"tcp://127.0.0.1:{replay_base + r}",
            topic=topic,
            bind=False,
        )
        for r in (0, 1)
    ]
    try:
        for r, p in enumerate(ranks):  # both count 0, 1, 2, ... on the same topic
            before = sub.counters.batches
            while sub.counters.batches == before:
                p.publish(batch(rank=r))
                await asyncio.sleep(0.02)
        a, b, c = chain(50, 2), chain(51, 2), chain(52, 2)
        ranks[0].publish(batch(stored(a), rank=0))
        ranks[1].publish(batch(stored(b), rank=1), lose=True)  # rank 1 loses one
        ranks[1].publish(batch(stored(c), rank=1))
        ranks[0].publish(batch(rank=0))
        want = {Holder(EP, "GPU", 0): keys(a), Holder(EP, "GPU", 1): keys(b) | keys(c)}
        await eventually_async(lambda: _eq(held(mem), want))
        assert (sub.counters.gaps, sub.counters.replays, sub.counters.resyncs) == (1, 1, 0)
        assert {k.rank for k in sub.applier.publishers} == {0, 1}
    finally:
        for p in ranks:
            p.close()
        await sub.stop()


async def test_bind_ranks_needs_a_fixed_port() -> None:
    sub = KVEventSubscriber(
        InMemoryIndex(), SubscriberConfig(bind="tcp://127.0.0.1:0", bind_ranks=2)
    )
    with pytest.raises(ValueError, match="bind_ranks"):
        await sub.start()
    await sub.stop()
