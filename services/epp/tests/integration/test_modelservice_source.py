"""Endpoints from a modelservice watch stream (modelservice's NDJSON format) over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from .conftest import Driver, Engine, epp_settings, free_port, until

pytestmark = pytest.mark.integration


def endpoint(e: Engine, state: str = "ready") -> dict[str, Any]:
    return {
        "id": e.name, "model": "m", "namespace": "default", "role": "both",
        "address": "127.0.0.1", "port": e.port, "state": state, "engine": "sim",
        "labels": {"llm-d.ai/model": "m", "llm-d.ai/role": "both"},
    }  # fmt: skip


class FakeModelService:
    """Serves `/v1/endpoints/watch` like modelservice: snapshot as ADDED, a synced bookmark,
    then whatever events the test pushes; `drop()` ends the current stream."""

    def __init__(self, engines: list[Engine]) -> None:
        self.current = {e.name: endpoint(e) for e in engines}
        self.revision = len(engines)
        self.queues: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.connections = 0

    def push(self, kind: str, ep: dict[str, Any]) -> None:
        self.revision += 1
        if kind == "DELETED":
            self.current.pop(ep["id"], None)
        else:
            self.current[ep["id"]] = ep
        for q in self.queues:
            q.put_nowait({"type": kind, "revision": self.revision, "endpoint": ep})

    def drop(self) -> None:
        for q in self.queues:
            q.put_nowait(None)

    async def watch(self, request: Request) -> StreamingResponse:
        self.connections += 1
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.queues.append(q)

        async def lines() -> AsyncIterator[bytes]:
            try:
                for ep in list(self.current.values()):
                    yield _line({"type": "ADDED", "revision": self.revision, "endpoint": ep})
                yield _line({"type": "BOOKMARK", "revision": self.revision, "synced": True})
                while (event := await q.get()) is not None:
                    yield _line(event)
            finally:
                self.queues.remove(q)

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event) + "\n").encode()


async def test_endpoints_follow_the_modelservice_watch(engines: list[Engine], run_epp: Any) -> None:
    ms = FakeModelService(engines[:3])
    port = free_port()
    app = Starlette(routes=[Route("/v1/endpoints/watch", ms.watch)])
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=2
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, 10, "fake modelservice up")
        epp = await run_epp(
            epp_settings(
                "--modelservice-url", f"http://127.0.0.1:{port}", "--modelservice-model", "m"
            )
        )
        keys = lambda: {e.key for e in epp.store.candidates()}  # noqa: E731
        await until(lambda: keys() == {e.key for e in engines[:3]}, 10, "snapshot applied")
        assert epp.store.get(engines[0].key).labels["llm-d.ai/role"] == "both"  # type: ignore[union-attr]
        driver = Driver(f"127.0.0.1:{epp.grpc.port}")
        try:
            ms.push("ADDED", endpoint(engines[3]))
            await until(lambda: engines[3].key in keys(), 5, "added endpoint")
            ms.push("MODIFIED", endpoint(engines[0], state="draining"))
            ms.push("DELETED", endpoint(engines[1]))
            await until(lambda: keys() == {engines[2].key, engines[3].key}, 5, "removals")
            outs = [await driver.send({"model": "m", "prompt": f"p{i}"}) for i in range(12)]
            assert {o.endpoint for o in outs} <= {engines[2].key, engines[3].key}
            # The stream breaks; while away engine 3 goes; the reconnect snapshot drops it.
            ms.current.pop(engines[3].name)
            ms.drop()
            await until(lambda: ms.connections >= 2, 10, "reconnected")
            await until(lambda: keys() == {engines[2].key}, 5, "resynced")
        finally:
            await driver.close()
    finally:
        ms.drop()  # end the open watch streams so the server can shut down
        server.should_exit = True
        await task
