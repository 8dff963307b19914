"""Health over a real grpc.aio server and client (Check and Watch), and over FastAPI."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmd_sdk.health import HealthServicer, HealthState, add_health_routes

EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
DEADLINE_S = 5.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthState, Any]]:
    """A HealthState served by a grpc.aio server on a free loopback port, and a client stub."""
    state = HealthState([EXT_PROC])
    server = grpc.aio.server()
    HealthServicer(state).add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield state, health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)


async def _check(stub: Any, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    response = await stub.Check(request, timeout=DEADLINE_S)
    return int(response.status)


@pytest.mark.integration
async def test_check_before_and_after_ready(served: tuple[HealthState, Any]) -> None:
    state, stub = served
    assert await _check(stub, "liveness") == SERVING
    assert await _check(stub, "") == SERVING
    assert await _check(stub, "readiness") == NOT_SERVING
    assert await _check(stub, EXT_PROC) == NOT_SERVING
    state.set_ready()
    assert await _check(stub, "readiness") == SERVING
    assert await _check(stub, EXT_PROC) == SERVING
    state.set_live(False)
    assert await _check(stub, "liveness") == NOT_SERVING
    assert await _check(stub, EXT_PROC) == NOT_SERVING  # a dead process is not ready


@pytest.mark.integration
async def test_unknown_service_is_not_found(served: tuple[HealthState, Any]) -> None:
    _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(stub, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.integration
async def test_shutdown_is_not_serving_everywhere_for_good(
    served: tuple[HealthState, Any],
) -> None:
    state, stub = served
    state.set_ready()
    state.shutdown()
    state.set_ready()  # ignored once shutting down
    for service in ("", "liveness", "readiness", EXT_PROC):
        assert await _check(stub, service) == NOT_SERVING


@pytest.mark.integration
async def test_watch_streams_each_change(served: tuple[HealthState, Any]) -> None:
    state, stub = served
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=EXT_PROC))
    try:

        async def next_status() -> int:
            return int((await asyncio.wait_for(stream.read(), DEADLINE_S)).status)

        assert await next_status() == NOT_SERVING
        state.set_ready()
        assert await next_status() == SERVING
        state.set_ready()  # no change, no message; the next one is the shutdown
        state.shutdown()
        assert await next_status() == NOT_SERVING
    finally:
        stream.cancel()


@pytest.mark.integration
async def test_watch_of_an_unknown_service_says_so(served: tuple[HealthState, Any]) -> None:
    _, stub = served
    stream = stub.Watch(health_pb2.HealthCheckRequest(service="later.Service"))
    try:
        response = await asyncio.wait_for(stream.read(), DEADLINE_S)
        assert response.status == SERVICE_UNKNOWN
    finally:
        stream.cancel()


@pytest.mark.integration
async def test_readiness_flipped_from_another_thread_reaches_watchers(
    served: tuple[HealthState, Any],
) -> None:
    state, stub = served
    stream = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"))
    try:
        first = await asyncio.wait_for(stream.read(), DEADLINE_S)
        assert first.status == NOT_SERVING
        worker = threading.Thread(target=state.set_ready)
        worker.start()
        worker.join(DEADLINE_S)
        second = await asyncio.wait_for(stream.read(), DEADLINE_S)
        assert second.status == SERVING
    finally:
        stream.cancel()


async def test_http_healthz_and_readyz() -> None:
    state = HealthState()
    app = FastAPI()
    add_health_routes(app, state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        live, ready = await client.get("/healthz"), await client.get("/readyz")
        assert (live.status_code, live.json()) == (200, {"status": "SERVING"})
        assert (ready.status_code, ready.json()) == (503, {"status": "NOT_SERVING"})
        state.set_ready()
        assert (await client.get("/readyz")).status_code == 200
        state.shutdown()
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 503


def test_state_listeners_fire_only_on_change() -> None:
    state = HealthState(["a", "a", "b"])
    assert state.service_names == ("a", "b")
    calls: list[bool] = []

    def listener() -> None:
        calls.append(state.ready)

    state.add_listener(listener)
    state.set_ready(False)  # already not ready
    state.set_ready()
    state.set_ready()
    state.shutdown()
    state.shutdown()
    state.remove_listener(listener)
    assert calls == [True, False]
    assert state.status("b") == "NOT_SERVING" and state.status("c") is None
