"""The Kubernetes endpoint source against an HTTP server speaking the API server's protocol for
the few calls it makes (read the InferencePool, list and watch Pods, list InferenceObjectives).
There is no real API server on this machine; the kind tests cover a real cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.sources.kubernetes import KubernetesSource
from llmd_epp.objectives import Objectives
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .conftest import free_port, until

pytestmark = pytest.mark.integration
NS, POOL = "llm", "pool"


def pod(name: str, ip: str, ready: bool = True, rv: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "vllm"},
                     "resourceVersion": rv},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"podIP": ip, "phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


class FakeAPI:
    def __init__(self) -> None:
        self.pods = {"p0": pod("p0", "10.0.0.1"), "p1": pod("p1", "10.0.0.2", ready=False)}
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.selectors: list[str] = []
        self.lists = 0
        self.fail_lists = 0  # answer this many of the next pod lists with 500

    async def pool(self, request: Request) -> Response:
        return JSONResponse(
            {
                "apiVersion": "inference.networking.k8s.io/v1",
                "kind": "InferencePool",
                "metadata": {"name": POOL, "namespace": NS},
                "spec": {
                    "selector": {"matchLabels": {"app": "vllm"}},
                    "targetPorts": [{"number": 8000}, {"number": 8001}],
                },
            }
        )

    async def pods_handler(self, request: Request) -> Response:
        self.selectors.append(request.query_params.get("labelSelector", ""))
        if request.query_params.get("watch") in ("true", "True", "1"):

            async def stream() -> AsyncIterator[bytes]:
                while (event := await self.events.get()) is not None:
                    yield (json.dumps(event) + "\n").encode()

            return StreamingResponse(stream(), media_type="application/json")
        self.lists += 1
        if self.fail_lists > 0:
            self.fail_lists -= 1
            return JSONResponse({"kind": "Status", "code": 500, "message": "etcd"}, 500)
        return JSONResponse(
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": "1"},
                "items": list(self.pods.values()),
            }
        )

    async def objectives(self, request: Request) -> Response:
        return JSONResponse(
            {
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "List",
                "items": [
                    {
                        "metadata": {"name": "batch"},
                        "spec": {"priority": -1, "poolRef": {"name": POOL}},
                    }
                ],
            }
        )


async def test_pods_of_the_pool_become_endpoints(tmp_path: Path) -> None:
    api = FakeAPI()
    port = free_port()
    app = fake_api_app(api)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=1
        )
    )
    serving = asyncio.create_task(server.serve())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", port)
    store = Datastore()
    source = KubernetesSource(POOL, NS, str(kubeconfig))
    objectives = Objectives()
    task = asyncio.create_task(source.run(store))
    obj_task = asyncio.create_task(source.run_objectives(objectives, interval=0.2))
    try:
        await until(lambda: server.started, 10, "fake API server")
        keys = lambda: sorted(e.key for e in store.candidates())  # noqa: E731
        await until(lambda: store.synced, 30, "initial list")
        assert keys() == ["10.0.0.1:8000", "10.0.0.1:8001"]  # the unready pod is left out
        assert [e.rank for e in store.candidates()] == [0, 1]
        assert store.get("10.0.0.1:8000").name == f"{NS}/p0"  # type: ignore[union-attr]
        assert api.selectors[0] == "app=vllm"
        api.events.put_nowait({"type": "MODIFIED", "object": pod("p1", "10.0.0.2", rv="2")})
        await until(lambda: "10.0.0.2:8000" in keys(), 10, "pod became ready")
        api.events.put_nowait({"type": "DELETED", "object": pod("p0", "10.0.0.1", rv="3")})
        await until(lambda: keys() == ["10.0.0.2:8000", "10.0.0.2:8001"], 10, "pod deleted")
        await until(lambda: objectives.priority("batch") == -1, 10, "objectives listed")
    finally:
        task.cancel()
        obj_task.cancel()
        await asyncio.gather(task, obj_task, return_exceptions=True)
        api.events.put_nowait(None)
        server.should_exit = True
        await serving


def fake_api_app(api: FakeAPI) -> Starlette:
    return Starlette(
        routes=[
            Route(f"/apis/inference.networking.k8s.io/v1/namespaces/{NS}/inferencepools/{POOL}",
                  api.pool),
            Route(f"/api/v1/namespaces/{NS}/pods", api.pods_handler),
            Route(f"/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/{NS}/inferenceobjectives",
                  api.objectives),
        ]
    )  # fmt: skip


def write_kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    return path


async def test_expired_or_failed_watch_relists_instead_of_ending(tmp_path: Path) -> None:
    """A watch ends with 410 Gone whenever the API server compacted its resource version (every
    few minutes in a real cluster), and list calls fail while the API server restarts: the source
    lists again and keeps following the pods."""
    api = FakeAPI()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            fake_api_app(api), host="127.0.0.1", port=port, log_level="error",
            timeout_graceful_shutdown=1,
        )
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    store = Datastore()
    source = KubernetesSource(POOL, NS, str(write_kubeconfig(tmp_path / "kubeconfig", port)))
    task = asyncio.create_task(source.run(store))
    keys = lambda: sorted(e.key for e in store.candidates())  # noqa: E731
    try:
        await until(lambda: store.synced, 30, "initial list")
        assert keys() == ["10.0.0.1:8000", "10.0.0.1:8001"]
        # While the watch is down, p0 goes away and p2 arrives; only a relist can tell.
        del api.pods["p0"]
        api.pods["p2"] = pod("p2", "10.0.0.3")
        api.fail_lists = 2
        gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                "reason": "Expired", "message": "too old resource version: 1 (50)"}  # fmt: skip
        api.events.put_nowait({"type": "ERROR", "object": gone})
        await until(
            lambda: keys() == ["10.0.0.3:8000", "10.0.0.3:8001"] or task.done(),
            20,
            "relist after 410 and two failed lists",
        )
        assert not task.done(), task.exception()
        assert keys() == ["10.0.0.3:8000", "10.0.0.3:8001"]
        assert api.lists == 4  # initial, two failures, the good one
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(2):  # one per watch stream the server still holds
            api.events.put_nowait(None)
        server.should_exit = True
        await serving
