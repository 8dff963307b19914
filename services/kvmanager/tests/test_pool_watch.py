"""Pool membership from a modelservice watch stream (NDJSON over HTTP, as modelservice serves it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from llmd_kvmanager.config import config_from
from llmd_kvmanager.server import Server
from llmd_sdk.kvcache.index import Holder, StoreBlocks
from llmd_sdk.kvcache.publisher import KVEventPublisher

pytestmark = pytest.mark.integration


class WatchServer:
    """Serves GET /v1/endpoints/watch: a snapshot, a synced bookmark, then pushed events."""

    def __init__(self) -> None:
        self.endpoints: dict[str, dict[str, object]] = {}
        self.revision = 0
        self.queues: list[asyncio.Queue[dict[str, object]]] = []
        self.requests: list[dict[str, str]] = []
        app = FastAPI()

        @app.get("/v1/endpoints/watch")
        async def watch(request: Request) -> StreamingResponse:
            self.requests.append(dict(request.query_params))
            q: asyncio.Queue[dict[str, object]] = asyncio.Queue()
            self.queues.append(q)

            async def lines() -> AsyncIterator[bytes]:
                for ep in self.endpoints.values():
                    yield (
                        json.dumps({"type": "ADDED", "revision": self.revision, "endpoint": ep})
                        + "\n"
                    ).encode()
                yield (
                    json.dumps({"type": "BOOKMARK", "revision": self.revision, "synced": True})
                    + "\n"
                ).encode()
                while True:
                    ev = await q.get()
                    if ev.get("type") == "CLOSE":
                        return
                    yield (json.dumps(ev) + "\n").encode()

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))

    def push(self, kind: str, ep: dict[str, object]) -> None:
        self.revision += 1
        if kind == "DELETED":
            self.endpoints.pop(str(ep["id"]), None)
        else:
            self.endpoints[str(ep["id"])] = ep
        for q in self.queues:
            q.put_nowait({"type": kind, "revision": self.revision, "endpoint": ep})

    def drop_connections(self) -> None:
        for q in self.queues:
            q.put_nowait({"type": "CLOSE"})
        self.queues.clear()


def endpoint(i: int, kv: str | None = None, algo: str = "sha256") -> dict[str, object]:
    return {
        "id": f"sim-{i}", "model": "sim", "address": "10.1.0.1", "port": 8000 + i,
        "state": "ready", "served_names": ["served"], "kv_topic": f"kv@10.1.0.1:{8000 + i}@served",
        "kv_events_endpoint": kv, "hash_algo": algo, "hash_seed": "42", "block_size": 32,
    }  # fmt: skip


async def eventually(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture
async def watch() -> AsyncIterator[WatchServer]:
    ws = WatchServer()
    task = asyncio.create_task(ws.server.serve())
    await eventually(lambda: ws.server.started)
    yield ws
    ws.drop_connections()
    ws.server.should_exit = True
    await task


async def test_membership_follows_the_watch(watch: WatchServer) -> None:
    port = watch.server.servers[0].sockets[0].getsockname()[1]
    engine = KVEventPublisher("tcp://127.0.0.1:0", bind=True)
    watch.endpoints["sim-0"] = endpoint(0)
    cfg = config_from(
        {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0,
         "pool": {"modelservice_url": f"http://127.0.0.1:{port}"}}
    )  # fmt: skip
    srv = Server(cfg)
    await srv.start()
    m = srv.manager
    try:
        assert srv.pool is not None
        await asyncio.wait_for(srv.pool.synced.wait(), 5)
        assert srv.pool.members == {"sim-0": "10.1.0.1:8000"}
        # The model's hashing comes from the engine: a keyer with its algo, seed and block size.
        keyer = m.indexer.keyers["served"]
        assert (keyer.hasher.algo, keyer.block_size) == ("sha256", 32)

        # An engine whose publisher binds: kvmanager connects to it.
        watch.push("ADDED", endpoint(1, kv=engine.endpoint))
        await eventually(lambda: [e.endpoint for e in m.subscriber.engines] == ["10.1.0.1:8001"])

        # Leaving the pool purges what the index knew about the engine.
        await m.index.apply([StoreBlocks("served", Holder("10.1.0.1:8000"), [1, 2])])
        watch.push("DELETED", endpoint(0))
        await eventually(lambda: "sim-0" not in srv.pool.members)  # type: ignore[union-attr]
        assert await m.index.endpoints() == []

        # A disconnect resumes with `since`; an engine removed meanwhile is purged on resync.
        watch.drop_connections()
        watch.endpoints.pop("sim-1")
        await eventually(lambda: len(watch.requests) >= 2)
        assert watch.requests[-1].get("since") == str(watch.revision)
        await eventually(lambda: m.subscriber.engines == [])
    finally:
        engine.close()
        await srv.stop(grace=1)
