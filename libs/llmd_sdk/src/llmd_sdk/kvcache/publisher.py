"""A KV-event publisher with vLLM's wire behaviour, for tests, benchmarks and simulators.

Like vLLM's ``ZmqEventPublisher``: a PUB socket sends ``[topic, seq (8 bytes big-endian), payload]``
with ``seq`` counting batches from 0; the last `buffer_steps` batches are kept for a ROUTER replay
socket that answers a request ``[b"", start_seq]`` with ``[b"", topic, seq, payload]`` for every
buffered batch from ``start_seq`` on, then ``[b"", b"", -1, b""]`` (current vLLM; with
``replay_topic=False`` the older replies without the topic frame). An endpoint with ``*`` binds,
any other connects (vLLM's rule), unless `bind` says otherwise.

`publish(..., lose=True)` numbers and buffers a batch without sending it: a message lost in
transit, which a subscriber sees as a sequence gap that replay can fill.
"""

from __future__ import annotations

import threading
from collections import deque

import zmq

from llmd_sdk.kvcache.events import END_SEQ, KVEventBatch, encode_batch, encode_seq


class KVEventPublisher:
    """Publishes KV-event batches; not thread-safe (one publishing thread)."""

    def __init__(
        self,
        endpoint: str = "tcp://*:5557",
        replay_endpoint: str | None = None,
        topic: str = "",
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
        bind: bool | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        replay_topic: bool = True,
    ) -> None:
        self.replay_topic = replay_topic
        self._ctx = context or zmq.Context.instance()
        self.topic = topic.encode()
        self.seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        self._pub.setsockopt(zmq.LINGER, 1000)
        if bind if bind is not None else "*" in endpoint:
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay_endpoint: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if replay_endpoint is not None:
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.bind(replay_endpoint)
            self.replay_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._thread = threading.Thread(
                target=self._serve_replay, args=(router,), name="kv-replay", daemon=True
            )
            self._thread.start()

    def publish(self, batch: KVEventBatch | bytes, lose: bool = False) -> int:
        """Send one batch (or an encoded payload); returns its sequence number."""
        payload = batch if isinstance(batch, bytes) else encode_batch(batch)
        seq = self.seq
        self.seq += 1
        with self._lock:
            self._buffer.append((seq, payload))
        if not lose:
            self._pub.send_multipart((self.topic, encode_seq(seq), payload), copy=False)
        return seq

    def send_raw(self, frames: list[bytes]) -> None:
        """Send arbitrary frames (malformed-message tests)."""
        self._pub.send_multipart(frames)

    def _serve_replay(self, router: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not dict(poller.poll(100)):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3:
                    continue
                client, _, start_raw = frames
                start = int.from_bytes(start_raw, "big", signed=True)
                with self._lock:
                    items = [(s, p) for s, p in self._buffer if s >= start]
                head = [client, b"", self.topic] if self.replay_topic else [client, b""]
                for s, p in items:
                    router.send_multipart([*head, encode_seq(s), p])
                router.send_multipart([*head[:2], b"", END_SEQ, b""] if self.replay_topic
                                      else [client, b"", END_SEQ, b""])  # fmt: skip
        finally:
            router.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pub.close(linger=0)

    def __enter__(self) -> KVEventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
