from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from llmd_sdk.extproc import (
    CONTINUE,
    ExtProcStream,
    GrpcServer,
    Headers,
    Reply,
    StreamContext,
    error_response,
    ext_proc_registrar,
)


class ModelRouter(ExtProcStream):
    """A small body-routing processor: the shape of BBR and EPP."""

    service_name = "model-router"
    closed: list[bool]
    seen_response_chunks: list[bytes]

    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        if not body:
            return CONTINUE
        try:
            doc = json.loads(body)
        except ValueError:
            return Reply(immediate=error_response(400, "body is not JSON"))
        if doc.get("model") == "boom":
            raise RuntimeError("planted failure")
        new_body = None
        if doc.get("model") == "alias":
            doc["model"] = "target"
            new_body = json.dumps(doc).encode()
        return Reply(
            set_headers={"x-gateway-model-name": doc["model"]},
            clear_route_cache=True,
            dynamic_metadata={"envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000"}},
            body=new_body,
        )

    async def on_response_headers(self, headers: Headers, end_of_stream: bool) -> Reply:
        served = self.context.metadata.get("envoy.lb", {}).get(
            "x-gateway-destination-endpoint-served", "unknown"
        )
        return Reply(set_headers={"x-served-by": served})

    async def on_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        self.seen_response_chunks.append(chunk)

    async def on_close(self, complete: bool) -> None:
        self.closed.append(complete)


@asynccontextmanager
async def serving(factory: Callable[[StreamContext], ExtProcStream]) -> AsyncIterator[str]:
    """A real ext_proc gRPC server on a free loopback port, running `factory`'s streams."""
    _, register = ext_proc_registrar(factory)
    server = GrpcServer("127.0.0.1:0", [register])
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


@pytest.fixture
async def model_router() -> AsyncIterator[tuple[str, list[bool], list[bytes]]]:
    closed: list[bool] = []
    chunks: list[bytes] = []

    def factory(ctx: StreamContext) -> ExtProcStream:
        s = ModelRouter(ctx)
        s.closed = closed
        s.seen_response_chunks = chunks
        return s

    async with serving(factory) as target:
        yield target, closed, chunks


@pytest.fixture
def chunked() -> Callable[[bytes, int], list[bytes]]:
    def split(body: bytes, at: int) -> list[bytes]:
        return [p for p in (body[:at], body[at:]) if p]

    return split
