"""The service end to end: events in over ZMQ, scores out over gRPC, health/metrics/pool on HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import httpx
import pytest
from llmd_kvmanager.config import config_from
from llmd_kvmanager.manager import KVManager
from llmd_kvmanager.server import Server
from llmd_sdk.contracts import kvindex, kvindex_grpc
from llmd_sdk.kvcache.events import BlockStored, KVEventBatch
from llmd_sdk.kvcache.hashing import BlockHasher
from llmd_sdk.kvcache.index import HolderSet, InMemoryIndex
from llmd_sdk.kvcache.publisher import KVEventPublisher

pytestmark = pytest.mark.integration

MODEL = "m"
HASHER = BlockHasher(block_size=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def stored(token_ids: list[int], medium: str = "GPU") -> BlockStored:
    hashes = HASHER.hash_tokens(token_ids)
    return BlockStored(
        block_hashes=list(hashes),
        parent_block_hash=None,
        token_ids=token_ids[: 16 * len(hashes)],
        block_size=16,
        lora_id=None,
        medium=medium,
        lora_name=None,
    )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    cfg = config_from(
        {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "ingest": {"bind": "tcp://127.0.0.1:0"},
            "models": [{"name": MODEL}],
            "accept_unknown_models": False,
        }
    )
    srv = Server(cfg)
    await srv.start()
    yield srv
    await srv.stop(grace=1)


async def connect_engine(srv: Server, endpoint: str) -> KVEventPublisher:
    address = srv.manager.subscriber.bound_address
    assert address is not None
    pub = KVEventPublisher(address, topic=f"kv@{endpoint}@{MODEL}", bind=False)
    counters = srv.manager.subscriber.counters
    before = counters.batches
    deadline = time.monotonic() + 5
    while counters.batches == before:  # PUB/SUB: wait until the connection carries messages
        assert time.monotonic() < deadline, "no batch arrived"
        pub.publish(KVEventBatch(ts=time.time(), events=[]))
        await asyncio.sleep(0.02)
    return pub


async def test_score_and_stats_over_grpc(server: Server) -> None:
    a = await connect_engine(server, "10.0.0.1:8000")
    b = await connect_engine(server, "10.0.0.2:8000")
    try:
        prompt = list(range(16 * 10 + 3))
        a.publish(KVEventBatch(ts=time.time(), events=[stored(prompt)]))
        b.publish(KVEventBatch(ts=time.time(), events=[stored(prompt[: 16 * 4], "CPU")]))
        await eventually(lambda: server.manager.subscriber.counters.batches >= 4)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            stub = kvindex_grpc.KVIndexStub(ch)
            await eventually_async_score(stub, prompt)
            resp = await stub.Score(
                kvindex.ScoreRequest(
                    model=MODEL,
                    token_ids=kvindex.TokenIds(ids=prompt),
                    candidate_endpoints=["10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.3:8000"],
                )
            )
            assert (resp.total_blocks, resp.prompt_tokens, resp.block_size) == (10, 163, 16)
            got = [(s.endpoint, s.matched_blocks, round(s.score, 3)) for s in resp.scores]
            assert got == [
                ("10.0.0.2:8000", 4, 3.2),
                ("10.0.0.1:8000", 10, 10.0),
                ("10.0.0.3:8000", 0, 0.0),
            ]
            assert dict(resp.scores[0].blocks_by_medium) == {"CPU": 4}
            assert resp.scores[1].data_parallel_rank == -1

            everyone = await stub.Score(
                kvindex.ScoreRequest(model=MODEL, token_ids=kvindex.TokenIds(ids=prompt))
            )
            assert [s.endpoint for s in everyone.scores] == ["10.0.0.1:8000", "10.0.0.2:8000"]

            stats = await stub.Stats(kvindex.StatsRequest())
            assert (stats.keys, stats.entries) == (10, 14)
            assert {(e.endpoint, e.blocks) for e in stats.engines} == {
                ("10.0.0.1:8000", 10),
                ("10.0.0.2:8000", 4),
            }

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(
                    kvindex.ScoreRequest(model="nope", token_ids=kvindex.TokenIds(ids=[1]))
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "model: 'nope' is not configured"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(kvindex.ScoreRequest(model=MODEL, prompt="hello"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(kvindex.ScoreRequest(model=MODEL))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        a.close()
        b.close()


async def eventually_async_score(stub: kvindex_grpc.KVIndexStub, prompt: list[int]) -> None:
    deadline = time.monotonic() + 5
    while True:
        resp = await stub.Score(
            kvindex.ScoreRequest(
                model=MODEL,
                token_ids=kvindex.TokenIds(ids=prompt),
                candidate_endpoints=["10.0.0.1:8000"],
            )
        )
        if resp.scores[0].matched_blocks == 10:
            return
        assert time.monotonic() < deadline, "events never reached the index"
        await asyncio.sleep(0.01)


async def test_http_health_metrics_and_pool(server: Server) -> None:
    pub = await connect_engine(server, "10.0.0.1:8000")
    try:
        pub.publish(KVEventBatch(ts=time.time(), events=[stored(list(range(48)))]))
        await eventually(lambda: server.manager.subscriber.counters.batches >= 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            text = (await http.get("/metrics")).text
            assert 'kvmanager_events_total{type="BlockStored"} 1.0' in text
            assert 'kvmanager_blocks_total{op="stored"} 3.0' in text
            assert "kvmanager_index_keys 3.0" in text
            assert "kvmanager_ingest_lag_seconds_count" in text
            engines = (await http.get("/engines")).json()
            assert engines["publishers"][0]["endpoint"] == "10.0.0.1:8000"
            assert engines["publishers"][0]["blocks"] == 3

            bad = await http.post("/engines", json={"endpoint": "nohost", "zmq": "tcp://a:1"})
            assert bad.status_code == 400
            assert bad.json() == {"error": "endpoint: 'nohost' is not host:port"}

            # Leaving the pool purges the engine, and its later events are not accepted.
            assert (await http.delete("/engines/10.0.0.1:8000")).status_code == 200
            assert (await server.manager.index.stats()).entries == 0
            pub.publish(KVEventBatch(ts=time.time(), events=[stored(list(range(48)))]))
            await eventually(
                lambda: server.manager.subscriber.counters.dropped.get("not_in_pool", 0) > 0
            )
            assert (await server.manager.index.stats()).entries == 0
            assert (await http.delete("/engines/10.0.0.9:8000")).status_code == 404

            # An engine whose publisher binds, added at run time.
            eng = KVEventPublisher("tcp://127.0.0.1:0", bind=True)
            try:
                r = await http.post(
                    "/engines",
                    json={"endpoint": "10.0.0.5:8000", "zmq": eng.endpoint, "model": MODEL},
                )
                assert r.status_code == 201
                deadline = time.monotonic() + 5
                while not await server.manager.index.blocks_of(MODEL, "10.0.0.5:8000"):
                    assert time.monotonic() < deadline
                    eng.publish(KVEventBatch(ts=time.time(), events=[stored(list(range(32)))]))
                    await asyncio.sleep(0.02)
                listed = (await http.get("/engines")).json()["configured"]
                assert [e["endpoint"] for e in listed] == ["10.0.0.5:8000"]
            finally:
                eng.close()
    finally:
        pub.close()


def test_console_script_serves_and_stops_on_sigterm() -> None:
    grpc_port, http_port, zmq_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmd_kvmanager.server", "--host", "127.0.0.1",
         "--grpc-port", str(grpc_port), "--http-port", str(http_port),
         "--ingest.bind", f"tcp://127.0.0.1:{zmq_port}", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stats = kvindex_grpc.KVIndexStub(ch).Stats(kvindex.StatsRequest(), timeout=5)
            assert stats.keys == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _DownIndex(InMemoryIndex):
    async def lookup(self, model: str, keys: Sequence[int]) -> list[HolderSet]:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


async def test_a_failing_backend_answers_unavailable_in_one_line() -> None:
    cfg = config_from({"host": "127.0.0.1", "grpc_port": 0, "http_port": 0})
    srv = Server(cfg, KVManager(cfg, index=_DownIndex()))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            stub = kvindex_grpc.KVIndexStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Score(
                    kvindex.ScoreRequest(model="m", token_ids=kvindex.TokenIds(ids=list(range(32))))
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == (
                "index backend: Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )
    finally:
        await srv.stop(grace=1)
