"""KV events of a real `llmd-sim` process, read by a subscriber written from vLLM's field list.

The structs below are written here from ``vllm/distributed/kv_events.py`` (not imported from the
SDK), the socket is plain pyzmq, and the expected block hashes are computed independently from
the token ids. The events must reproduce the engine's cache state exactly.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import msgspec
import pytest
import zmq
from llmd_sdk.kvcache.hashing import BlockHasher, to_external
from llmd_sdk.tokenizer import load_tokenizer

from .conftest import free_port

pytestmark = pytest.mark.integration

Hash = bytes | int


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[Hash]
    parent_block_hash: Hash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[Hash]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


DECODER = msgspec.msgpack.Decoder(KVEventBatch)
BS = 16


class Subscriber:
    def __init__(self, endpoint: str, replay: str | None = None) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(endpoint)
        self.replay = replay
        self.received: list[tuple[int, KVEventBatch]] = []

    def drain(self, until: float) -> None:
        while time.monotonic() < until:
            if not self.sub.poll(50):
                continue
            topic, seq, payload = self.sub.recv_multipart()
            assert topic == b""
            self.received.append((int.from_bytes(seq, "big", signed=True), DECODER.decode(payload)))

    def replay_from(self, start: int) -> list[tuple[int, KVEventBatch]]:
        assert self.replay
        req = self.ctx.socket(zmq.DEALER)
        req.connect(self.replay)
        req.send_multipart([b"", start.to_bytes(8, "big")])
        out: list[tuple[int, KVEventBatch]] = []
        while True:
            assert req.poll(5000), "replay did not answer"
            frames = req.recv_multipart()
            assert frames[0] == b""
            _topic, seq, payload = frames[1:]
            n = int.from_bytes(seq, "big", signed=True)
            if n == -1:
                assert payload == b""
                break
            out.append((n, DECODER.decode(payload)))
        req.close(0)
        return out

    def close(self) -> None:
        self.sub.close(0)
        self.ctx.term()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def events_config(pub: int, replay: int) -> str:
    return (
        '{"enable_kv_cache_events": true, "publisher": "zmq", '
        f'"endpoint": "tcp://*:{pub}", "replay_endpoint": "tcp://*:{replay}"}}'
    )


def test_events_rebuild_the_engine_cache_exactly(sim_process: Any) -> None:
    pub, rep = free_port(), free_port()
    sim = sim_process(
        "--mode", "echo", "--time-scale", "0", "--num-gpu-blocks-override", "41",
        "--kv-events-config", events_config(pub, rep),
    )  # fmt: skip
    sub = Subscriber(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{rep}")
    try:
        client = httpx.Client(base_url=sim.url, timeout=30)
        tok = load_tokenizer()
        hasher = BlockHasher("sha256", BS)
        # Warm the subscription until one batch arrives (ZMQ's slow joiner); replay fills gaps.
        first_prompt = "alpha beta gamma delta " * 30
        client.post(
            "/v1/completions", json={"model": "llmd-sim", "prompt": first_prompt, "max_tokens": 20}
        )
        sub.drain(time.monotonic() + 1.0)
        prompts = [f"document {i}: " + "lorem ipsum dolor sit amet " * 25 for i in range(6)]
        for p in prompts:
            r = client.post(
                "/v1/completions", json={"model": "llmd-sim", "prompt": p, "max_tokens": 20}
            )
            assert r.status_code == 200
        sub.drain(time.monotonic() + 1.0)
        history = sub.replay_from(0)
        # Replay gives every batch from 0 with contiguous sequence numbers; what the subscriber
        # received live is the same stream's tail.
        assert [s for s, _ in history] == list(range(len(history)))
        live = dict(sub.received)
        assert live and all(
            msgspec.msgpack.encode(live[s]) == msgspec.msgpack.encode(b)
            for s, b in history
            if s in live
        )
        assert all(b.data_parallel_rank == 0 for _, b in history)

        # 1. The first request's stored blocks are its token chain, hashed by the recipe.
        prompt_ids = tok.encode(first_prompt)
        echo_ids = tok.encode(first_prompt, add_special_tokens=False)[:20]
        full = prompt_ids + echo_ids
        computed = len(full) - 1  # the last sampled token is never computed
        expected = hasher.hash_tokens(full[: computed // BS * BS])
        stored = [e for _, b in history for e in b.events if isinstance(e, BlockStored)]
        chain: list[Hash] = []
        for e in stored:
            assert e.medium == "GPU" and e.block_size == BS and e.lora_id is None
            assert (e.group_idx, e.kv_cache_spec_kind) == (0, "full_attention")
            assert len(e.token_ids) == BS * len(e.block_hashes)
            chain.extend(e.block_hashes)
            if len(chain) >= len(expected):
                break
        assert chain[: len(expected)] == expected
        assert stored[0].parent_block_hash is None
        # Decode blocks chain onto the prompt's blocks.
        assert stored[1].parent_block_hash == chain[len(stored[0].block_hashes) - 1]

        # 2. Stored minus removed is exactly what the engine holds now.
        counts: Counter[Hash] = Counter()
        removed_any = False
        for _, b in history:
            for e in b.events:
                if isinstance(e, BlockStored):
                    counts.update(e.block_hashes)
                elif isinstance(e, BlockRemoved):
                    removed_any = True
                    assert e.medium == "GPU" and e.group_idx == 0
                    for h in e.block_hashes:
                        assert counts[h] > 0, "removed a block never stored"
                        counts[h] -= 1
        assert removed_any, "the small cache should have evicted blocks"
        held = {h for h, c in counts.items() if c > 0}
        cache = client.get("/sim/cache").json()["ranks"][0]
        assert {bytes.fromhex(h) for h in cache["gpu"]} == held
        assert sum(counts.values()) == len(cache["gpu"]) + cache["gpu_duplicates"]

        # 3. Reset clears everything with one AllBlocksCleared.
        assert client.post("/reset_prefix_cache").status_code == 200
        wait_for(lambda: any(isinstance(e, AllBlocksCleared) for e in _events(sub)))
        assert client.get("/sim/cache").json()["ranks"][0]["gpu"] == []
    finally:
        sub.close()


def _events(sub: Subscriber) -> list[Any]:
    sub.drain(time.monotonic() + 0.2)
    return [e for _, b in sub.received for e in b.events]


def test_data_parallel_ranks_publish_on_offset_ports(sim_process: Any) -> None:
    pub = free_port()
    while True:  # rank 1 publishes on pub + 1: make sure that one is free too
        try:
            with __import__("socket").socket() as s:
                s.bind(("127.0.0.1", pub + 1))
            break
        except OSError:
            pub = free_port()
    cfg = f'{{"enable_kv_cache_events": true, "endpoint": "tcp://*:{pub}"}}'
    sim = sim_process("--time-scale", "0", "--data-parallel-size", "2", "--kv-events-config", cfg)
    sub1 = Subscriber(f"tcp://127.0.0.1:{pub + 1}")
    try:
        client = httpx.Client(base_url=sim.url, timeout=30)

        def send() -> bool:
            client.post(
                "/v1/completions",
                json={"model": "llmd-sim", "prompt": "rank one " * 40, "max_tokens": 2},
                headers={"X-data-parallel-rank": "1"},
            )
            sub1.drain(time.monotonic() + 0.3)
            return bool(sub1.received)

        wait_for(send, timeout=15)
        assert all(b.data_parallel_rank == 1 for _, b in sub1.received)
        ranks = client.get("/sim/cache").json()["ranks"]
        assert ranks[0]["gpu"] == [] and ranks[1]["gpu"]
        metrics = client.get("/metrics").text
        assert 'vllm:prefix_cache_queries_total{engine="1",model_name="llmd-sim"}' in metrics
    finally:
        sub1.close()


def test_int_block_hashes_when_vllm_env_asks_for_them(sim_process: Any) -> None:
    pub = free_port()
    cfg = f'{{"enable_kv_cache_events": true, "endpoint": "tcp://*:{pub}"}}'
    sim = sim_process(
        "--time-scale", "0", "--mode", "echo", "--kv-events-config", cfg,
        env={"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "1"},
    )  # fmt: skip
    sub = Subscriber(f"tcp://127.0.0.1:{pub}")
    try:
        client = httpx.Client(base_url=sim.url, timeout=30)
        text = "integers please " * 20

        def send() -> bool:
            client.post(
                "/v1/completions", json={"model": "llmd-sim", "prompt": text, "max_tokens": 1}
            )
            sub.drain(time.monotonic() + 0.3)
            return any(isinstance(e, BlockStored) for _, b in sub.received for e in b.events)

        wait_for(send, timeout=15)
        ids = load_tokenizer().encode(text)
        want = [to_external(h, True) for h in BlockHasher("sha256", BS).hash_tokens(ids)]
        got = next(e for _, b in sub.received for e in b.events if isinstance(e, BlockStored))
        assert all(isinstance(h, int) for h in got.block_hashes)
        assert got.block_hashes == want[: len(got.block_hashes)]
    finally:
        sub.close()
