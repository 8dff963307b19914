"""ZMQ subscriber of vLLM KV events, feeding a `KVBlockIndex` through an `EventApplier`.

Both configurations vLLM supports:

- the engine binds (``tcp://*:5557``, vLLM's default): `add_engine` connects one SUB socket per
  engine; its identity comes from the `EngineSource` (or from the topic when no model is given);
- engines connect to us: `SubscriberConfig.bind` binds one SUB socket; identity from the topic.

One receiver task per socket drains every ready message without yielding, parses the frames and
routes each to a shard by publisher, so one engine's batches stay in order. Shards are bounded
queues with one worker each: a shard whose backend is slow (a Redis round trip) does not hold up
the others, and when a shard is full the message is dropped and counted. A dropped message is just
a lost one: the worker sees the sequence gap and asks the engine's replay socket for what is
missing, or resyncs the engine. Malformed messages are counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import zmq
import zmq.asyncio

from llmd_sdk.kvcache.applier import EventApplier, PublisherKey, SeqStatus
from llmd_sdk.kvcache.events import END_SEQ, KVEventBatch, decode_batch, decode_seq, encode_seq
from llmd_sdk.kvcache.index.base import IndexOp, KVBlockIndex
from llmd_sdk.kvcache.topics import DEFAULT_TOPIC_PATTERN, TopicPattern
from llmd_sdk.telemetry import get_logger

_log = get_logger("llmd_sdk.kvcache.subscriber")

_DRAIN_MAX = 512


@dataclass(frozen=True, slots=True)
class EngineSource:
    """An engine that binds its PUB socket (vLLM's default): we connect to it.

    `endpoint` is the engine's serving address ("ip:port", what the EPP routes to); `model`
    None takes the model from the topic. `replay_address` is the engine's ROUTER replay socket;
    `topic` a subscription filter (default: every topic).
    """

    endpoint: str
    address: str
    model: str | None = None
    replay_address: str | None = None
    topic: str | None = None


@dataclass(slots=True)
class SubscriberConfig:
    """How to receive. `bind` set: one socket that engines connect to."""

    bind: str | None = None
    # Data-parallel engines connecting to `bind`: rank r connects to its port + r.
    bind_ranks: int = 1
    topic_filter: str = "kv@"
    topic_pattern: str = DEFAULT_TOPIC_PATTERN
    # Replay sockets of engines that connect to `bind`, by endpoint.
    replay_addresses: dict[str, str] = field(default_factory=dict)
    # Model for topics whose pattern carries none.
    default_model: str | None = None
    shards: int = 4
    queue_size: int = 4096
    replay_timeout_s: float = 2.0
    rcvhwm: int = 100_000
    # Accept publishers that are not `add_engine`d (bind mode: anyone who connects).
    open_pool: bool = True


class IngestObserver(Protocol):
    """Hooks for metrics; every method must be cheap and must not raise."""

    def batch(self, key: PublisherKey, batch: KVEventBatch, ops: list[IndexOp]) -> None: ...

    def malformed(self, reason: str) -> None: ...

    def dropped(self, reason: str) -> None: ...

    def gap(self, key: PublisherKey, missing: int, replayed: bool) -> None: ...

    def resync(self, key: PublisherKey, reason: str) -> None: ...


class _NullObserver:
    def batch(self, key: PublisherKey, batch: KVEventBatch, ops: list[IndexOp]) -> None:
        pass

    def malformed(self, reason: str) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass

    def gap(self, key: PublisherKey, missing: int, replayed: bool) -> None:
        pass

    def resync(self, key: PublisherKey, reason: str) -> None:
        pass


@dataclass(slots=True)
class IngestCounters:
    received: int = 0
    batches: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    replays: int = 0
    joins: int = 0
    resyncs: int = 0
    errors: int = 0


# (endpoint, model), seq, payload, replay address, whether that address is rank 0's (bind mode:
# rank r replays on port + r) or already the publisher's own (a configured engine socket).
_Item = tuple[PublisherKey, int, bytes, str | None, bool]


def offset_port(address: str | None, rank: int) -> str | None:
    """vLLM's per-rank address: data-parallel rank r publishes (and replays) on port + r."""
    if not address or rank <= 0:
        return address
    base, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    return f"{base}:{int(port) + rank}"


class KVEventSubscriber:
    """Receives KV events and keeps `index` in step with the engines."""

    def __init__(
        self,
        index: KVBlockIndex,
        config: SubscriberConfig | None = None,
        applier: EventApplier | None = None,
        observer: IngestObserver | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.index = index
        self.config = config or SubscriberConfig()
        if self.config.shards <= 0:
            raise ValueError(f"shards: must be positive, got {self.config.shards}")
        self.applier = applier or EventApplier()
        self.observer: IngestObserver = observer or _NullObserver()
        self.counters = IngestCounters()
        self.topics = TopicPattern(self.config.topic_pattern)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._queues: list[asyncio.Queue[_Item]] = []
        self._tasks: list[asyncio.Task[None]] = []
        # By ZMQ address: a data-parallel engine has one publisher per rank (port + rank).
        self._engines: dict[str, tuple[EngineSource, zmq.asyncio.Socket, asyncio.Task[None]]] = {}
        self._departed: set[str] = set()
        self._dirty: set[PublisherKey] = set()
        # (endpoint, model) -> the publishers (one per data-parallel rank) seen under it.
        self._ranks: dict[PublisherKey, set[PublisherKey]] = {}
        self._bound: zmq.asyncio.Socket | None = None
        self._started = False
        self.bound_address: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for i in range(self.config.shards):
            q: asyncio.Queue[_Item] = asyncio.Queue(self.config.queue_size)
            self._queues.append(q)
            self._tasks.append(asyncio.create_task(self._worker(q), name=f"kv-shard-{i}"))
        if self.config.bind:
            sock = self._sub_socket(self.config.topic_filter)
            sock.bind(self.config.bind)
            self.bound_address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            # vLLM's data-parallel rank r connects to the configured port + r: one socket,
            # several ports.
            for r in range(1, self.config.bind_ranks):
                address = offset_port(self.config.bind, r)
                if (
                    address is None
                    or address == self.config.bind
                    or self.config.bind.endswith(":0")
                ):
                    sock.close(linger=0)
                    raise ValueError(f"ingest.bind_ranks: {self.config.bind} has no fixed port")
                sock.bind(address)
            self._bound = sock
            self._tasks.append(asyncio.create_task(self._receive(sock, None), name="kv-bind"))

    async def stop(self) -> None:
        tasks = self._tasks + [t for _, _, t in self._engines.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for _, sock, _ in self._engines.values():
            sock.close(linger=0)
        if self._bound is not None:
            self._bound.close(linger=0)
        self._engines.clear()
        self._tasks.clear()
        self._queues.clear()
        self._started = False

    def _sub_socket(self, topic_filter: str) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, topic_filter.encode())
        return sock

    # -- pool membership ------------------------------------------------------------------------

    @property
    def engines(self) -> list[EngineSource]:
        return [src for src, _, _ in self._engines.values()]

    async def add_engine(self, source: EngineSource) -> None:
        """Subscribe to a publisher that binds (replaces one on the same address).

        A data-parallel engine publishes from every rank on its own port: add one source per
        rank, with the same endpoint.
        """
        if not self._started:
            await self.start()
        old = self._engines.pop(source.address, None)
        if old is not None:
            await self._close(old)
        self._departed.discard(source.endpoint)
        # The socket is this engine's alone: take every topic unless told otherwise (vLLM's
        # default topic is empty).
        sock = self._sub_socket(source.topic or "")
        sock.connect(source.address)
        task = asyncio.create_task(self._receive(sock, source), name=f"kv-{source.endpoint}")
        self._engines[source.address] = (source, sock, task)

    @staticmethod
    async def _close(entry: tuple[EngineSource, zmq.asyncio.Socket, asyncio.Task[None]]) -> None:
        _, sock, task = entry
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        sock.close(linger=0)

    def admit(self, endpoint: str) -> None:
        """Accept a bind-mode publisher again after `remove_engine`."""
        self._departed.discard(endpoint)

    async def remove_engine(self, endpoint: str, purge: bool = True) -> None:
        """The engine left the pool: stop listening and (by default) purge its entries."""
        for address in [a for a, (src, _, _) in self._engines.items() if src.endpoint == endpoint]:
            await self._close(self._engines.pop(address))
        if purge:
            self._departed.add(endpoint)
            for key in [k for k in self.applier.publishers if k.endpoint == endpoint]:
                self.applier.forget(key)
            for base in [b for b in self._ranks if b.endpoint == endpoint]:
                del self._ranks[base]
            await self.index.clear_endpoint(endpoint)

    def _accepts(self, endpoint: str, source: EngineSource | None) -> bool:
        if source is not None:
            return True
        if endpoint in self._departed:
            return False
        return self.config.open_pool or any(
            src.endpoint == endpoint for src, _, _ in self._engines.values()
        )

    # -- receiving ------------------------------------------------------------------------------

    async def _receive(self, sock: zmq.asyncio.Socket, source: EngineSource | None) -> None:
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        while True:
            await sock.poll()  # POLLIN
            for _ in range(_DRAIN_MAX):
                try:
                    frames = raw.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._route(frames, source)

    def _route(self, frames: list[bytes], source: EngineSource | None) -> None:
        c = self.counters
        c.received += 1
        if len(frames) != 3:
            self._malformed("frames")
            return
        topic, seq_raw, payload = frames
        try:
            seq = decode_seq(seq_raw)
        except ValueError:
            self._malformed("sequence")
            return
        model: str | None
        if source is not None and source.model is not None:
            endpoint, model = source.endpoint, source.model
        else:
            parsed = self.topics.parse(topic)
            if parsed is None:
                self._malformed("topic")
                return
            endpoint, model = parsed
            if source is not None:
                endpoint = source.endpoint
        model = model or self.config.default_model
        if model is None:
            self._malformed("topic")
            return
        if not self._accepts(endpoint, source):
            self._drop("not_in_pool")
            return
        key = PublisherKey(endpoint, model)
        if source is not None:
            replay, per_rank = source.replay_address, False
        else:
            replay, per_rank = self.config.replay_addresses.get(endpoint), True
        q = self._queues[hash(key) % len(self._queues)]
        try:
            q.put_nowait((key, seq, payload, replay, per_rank))
        except asyncio.QueueFull:
            self._drop("queue_full")

    def _malformed(self, reason: str) -> None:
        m = self.counters.malformed
        m[reason] = m.get(reason, 0) + 1
        self.observer.malformed(reason)

    def _drop(self, reason: str) -> None:
        d = self.counters.dropped
        d[reason] = d.get(reason, 0) + 1
        self.observer.dropped(reason)

    # -- applying -------------------------------------------------------------------------------

    async def _worker(self, q: asyncio.Queue[_Item]) -> None:
        while True:
            base, seq, payload, replay, per_rank = await q.get()
            if base.endpoint in self._departed:
                continue
            key = base
            try:
                batch = self._decode(payload)
                if batch is None:
                    self._skip_malformed(base, seq)
                    continue
                if batch.data_parallel_rank is not None:
                    key = PublisherKey(base.endpoint, base.model, batch.data_parallel_rank)
                    if per_rank:
                        replay = offset_port(replay, batch.data_parallel_rank)
                self._ranks.setdefault(base, set()).add(key)
                await self._handle(key, seq, batch, replay)
            except Exception as exc:  # a backend error must not kill the shard
                # The batch may be half applied: resync this engine on its next batch.
                self.counters.errors += 1
                self._dirty.add(key)
                _log.warning("kv batch failed", endpoint=key.endpoint, model=key.model,
                             seq=seq, error=str(exc).splitlines()[0] if str(exc) else repr(exc))  # fmt: skip

    def _decode(self, payload: bytes) -> KVEventBatch | None:
        try:
            return decode_batch(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
            self._malformed("payload")
            return None

    def _skip_malformed(self, base: PublisherKey, seq: int) -> None:
        """An undecodable payload still used up a sequence number: step over it when the
        publisher has one known rank (the usual case), so that it does not look like a gap."""
        keys = self._ranks.get(base)
        if keys is not None and len(keys) == 1:
            (key,) = keys
            if self.applier.observe(key, seq) is SeqStatus.IN_ORDER:
                self.applier.advance(key, seq)

    async def _handle(
        self, key: PublisherKey, seq: int, batch: KVEventBatch, replay: str | None
    ) -> None:
        applier = self.applier
        status = applier.observe(key, seq)
        pre: list[IndexOp] = []
        if key in self._dirty:
            self._dirty.discard(key)
            pre = applier.resync_ops(key)
            self.counters.resyncs += 1
            self.observer.resync(key, "error")
        if status is SeqStatus.RESTART:
            pre = applier.restart_ops(key)
            self.counters.resyncs += 1
            self.observer.resync(key, "restart")
            applier.state(key).expected = None
            if seq > 0:
                status = SeqStatus.GAP
                applier.state(key).expected = 0
        if status is SeqStatus.FIRST and seq > 0 and replay:
            # Joined late (we started after the engine, or its first messages went before the
            # subscription reached it): catch up from the engine's buffer where it reaches.
            applier.state(key).expected = 0
            await self._recover(key, seq, replay, joining=True)
        if status is SeqStatus.GAP:
            if pre:
                await self.index.apply(pre)
                pre = []
            await self._recover(key, seq, replay)
        applier.advance(key, seq)
        await self._apply(key, batch, pre)

    async def _apply(self, key: PublisherKey, batch: KVEventBatch, pre: list[IndexOp]) -> None:
        ops = self.applier.ops(key, batch)
        if pre:
            ops = pre + ops
        self.counters.batches += 1
        await self.index.apply(ops)
        self.observer.batch(key, batch, ops)

    async def _recover(
        self, key: PublisherKey, seq: int, replay: str | None, joining: bool = False
    ) -> None:
        """Fill the gap ``expected..seq-1`` from the replay socket, or resync the engine.

        `joining`: the first batch seen from this publisher; without a full replay there is
        nothing to resync (the index has none of its entries), so what replay gives is applied.
        """
        st = self.applier.state(key)
        start = st.expected if st.expected is not None else 0
        missing = seq - start
        if joining:
            got = await self._fetch_replay(replay, start, seq, partial=True) if replay else None
            self.counters.joins += 1
            for s, payload in got or []:
                batch = self._decode(payload)
                self.applier.advance(key, s)
                if batch is not None:
                    await self._apply(key, batch, [])
            return
        self.counters.gaps += 1
        st.gaps += 1
        got = await self._fetch_replay(replay, start, seq) if replay else None
        self.observer.gap(key, missing, got is not None)
        if got is None:
            self.counters.resyncs += 1
            self.observer.resync(key, "gap")
            await self.index.apply(self.applier.resync_ops(key))
            return
        self.counters.replays += 1
        for s, payload in got:
            batch = self._decode(payload)
            self.applier.advance(key, s)
            if batch is not None:
                await self._apply(key, batch, [])

    async def _fetch_replay(
        self, address: str, start: int, until: int, partial: bool = False
    ) -> list[tuple[int, bytes]] | None:
        """Batches ``start..until-1`` from a vLLM replay ROUTER, or None if incomplete.

        `partial`: return the consecutive batches the engine still has that end at `until`.
        """
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(address)
            await sock.send_multipart([b"", encode_seq(start)])
            out: list[tuple[int, bytes]] = []
            deadline = time.monotonic() + self.config.replay_timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not await sock.poll(int(left * 1000)):
                    return None
                frames = await sock.recv_multipart()
                # After the delimiter: [seq, payload] (vLLM before the topic was added to
                # replies) or [topic, seq, payload] (current vLLM); the end is seq == -1.
                if len(frames) == 3:
                    _, seq_raw, payload = frames
                elif len(frames) == 4:
                    _, _, seq_raw, payload = frames
                else:
                    self._malformed("replay_frames")
                    return None
                if seq_raw == END_SEQ:
                    break
                try:
                    s = decode_seq(seq_raw)
                except ValueError:
                    self._malformed("replay_sequence")
                    return None
                if start <= s < until:
                    out.append((s, payload))
            seqs = [s for s, _ in out]
            if partial and seqs and seqs == list(range(seqs[0], until)):
                return out
            if seqs != list(range(start, until)):
                return None
            return out
        finally:
            sock.close(linger=0)
