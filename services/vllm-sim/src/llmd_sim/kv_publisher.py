"""KV events on ZMQ, published exactly as vLLM's ``ZmqEventPublisher`` does.

- A PUB socket sends ``[topic, seq, payload]``: the topic bytes, an 8-byte big-endian sequence
  number starting at 0, and the msgpack ``KVEventBatch`` ``[ts, events, data_parallel_rank]``.
- The endpoint binds when it holds ``*``, ``::``, ``ipc://`` or ``inproc://`` and connects
  otherwise; with data parallelism rank r's tcp port is the configured port + r.
- With a ``replay_endpoint`` a ROUTER socket answers a request ``[start_seq]`` (8 bytes) with
  ``[topic, seq, payload]`` for every buffered batch from ``start_seq`` on, then
  ``[b"", -1, b""]`` (frames after the ROUTER identity and empty delimiter).
- Sending happens on a background thread fed by a bounded queue, so the engine loop never blocks
  on the network; batches beyond ``max_queue_size`` are dropped and counted.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque

import zmq
from llmd_sdk.kvcache.events import END_SEQ, KVEventBatch, encode_batch, encode_seq

from llmd_sim.config import ConfigError, KVEventsConfig


def offset_endpoint_port(endpoint: str | None, data_parallel_rank: int) -> str | None:
    """vLLM's per-rank endpoint: tcp port + rank, ``_dp<rank>`` suffix for inproc."""
    if not endpoint or data_parallel_rank == 0:
        return endpoint
    if "inproc" in endpoint:
        return f"{endpoint}_dp{data_parallel_rank}"
    if "tcp" in endpoint and ":" in endpoint:
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + data_parallel_rank}"
    return endpoint


def _binds(endpoint: str) -> bool:
    return (
        "*" in endpoint
        or "::" in endpoint
        or endpoint.startswith("ipc://")
        or endpoint.startswith("inproc://")
    )


class ZmqEventPublisher:
    """One data-parallel rank's KV-event publisher."""

    def __init__(
        self,
        config: KVEventsConfig,
        data_parallel_rank: int = 0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.rank = data_parallel_rank
        self.endpoint = offset_endpoint_port(config.endpoint, data_parallel_rank) or ""
        self.replay_endpoint = offset_endpoint_port(config.replay_endpoint, data_parallel_rank)
        self._topic = config.topic.encode("utf-8")
        self._queue: queue.Queue[KVEventBatch | None] = queue.Queue(config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            if _binds(self.endpoint):
                self._pub.bind(self.endpoint)
            else:
                self._pub.connect(self.endpoint)
            if self.replay_endpoint:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(self.replay_endpoint)
        except zmq.ZMQError as exc:
            # A taken port or a malformed address is a configuration error: one line naming
            # the flag and the address, not a traceback from zmq.
            self._pub.close(linger=0)
            if self._replay is not None:
                self._replay.close(linger=0)
            which = "replay_endpoint" if self._replay is not None else "endpoint"
            addr = self.replay_endpoint if self._replay is not None else self.endpoint
            raise ConfigError(
                f"--kv-events-config: {which} {addr} (data parallel rank {self.rank}): "
                f"{exc.strerror}"
            ) from None
        self.bound = self._last_endpoint(self._pub)
        self.bound_replay = self._last_endpoint(self._replay) if self._replay else None
        self._seq = 0
        self.sent = 0
        self.dropped = 0
        self._running = True
        self._thread = threading.Thread(
            target=self._run, name=f"kv-events-dp{self.rank}", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
        """The address actually bound or connected (resolves ``tcp://*:0``)."""
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def publish(self, batch: KVEventBatch) -> None:
        """Queue a batch (stamped with this rank); never blocks."""
        if batch.data_parallel_rank is None:
            batch.data_parallel_rank = self.rank
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while self._running or not self._queue.empty():
            if self._replay is not None:
                with contextlib.suppress(zmq.ZMQError):
                    while self._replay.poll(0):
                        self._serve_replay()
            try:
                batch = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if batch is None:
                break
            payload = encode_batch(batch)
            seq = self._seq
            self._seq += 1
            try:
                self._pub.send_multipart((self._topic, encode_seq(seq), payload))
            except zmq.ZMQError:
                self.dropped += 1
                continue
            self._buffer.append((seq, payload))
            self.sent += 1

    def _serve_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            return
        client, _, start = frames
        start_seq = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= start_seq:
                self._replay.send_multipart((client, b"", self._topic, encode_seq(seq), payload))
        self._replay.send_multipart((client, b"", b"", END_SEQ, b""))

    def close(self, timeout: float = 1.0) -> None:
        """Flush what is queued (up to `timeout`), then close the sockets."""
        self._running = False
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=timeout)
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
