"""The dev gateway against real ext_proc processors and real upstream HTTP servers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
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
from llmd_sdk.openai import parse_request, peek_model
from llmd_sdk.telemetry import setup_tracing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmd.gateway import Gateway, GatewayConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _http_server(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


EPP_MESSAGE_TIMEOUT_S = 1.0
SLOW_FIRST_TOKEN_S = 1.5


def _prompt(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"]) if body.get("messages") else ""


def _engine_app(name: str) -> Starlette:
    """An upstream engine that reports who it is and what it received."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            # "slow": the first token comes after the EPP's message timeout, as for a request
            # that waits in the engine's queue.
            first_token_after = SLOW_FIRST_TOKEN_S if _prompt(body) == "slow" else 0.0

            async def sse() -> AsyncIterator[bytes]:
                await asyncio.sleep(first_token_after)
                for i in range(3):
                    yield f"data: {json.dumps({'engine': name, 'i': i})}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        return JSONResponse(
            {
                "engine": name,
                "model": body["model"],
                "raw_path": request.scope["raw_path"].decode(),
                "query": request.scope["query_string"].decode(),
                "headers": {
                    k: v
                    for k, v in request.headers.items()
                    if k.startswith("x-") or k == "traceparent"
                },
            }
        )

    return Starlette(routes=[Route("/v1/{rest:path}", completions, methods=["POST"])])


class FakeBBR(ExtProcStream):
    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        if not body:
            return CONTINUE
        model = peek_model(body)
        return Reply(set_headers={"x-gateway-model-name": model or ""}, clear_route_cache=True)


class FakeEPP(ExtProcStream):
    """Picks what the test says, and reports the served endpoint back as a header."""

    picks: dict[str, str]
    served_seen: list[str]
    response_chunks: list[bytes]

    async def on_request_body(self, headers: Headers, body: bytes) -> Reply:
        req = parse_request(body, headers.get(":path", ""))
        prompt = req.messages[-1].text() if hasattr(req, "messages") else req.prompt_text()
        if prompt == "shed":
            return Reply(immediate=error_response(429, "shed"))
        subset = self.context.metadata.get("envoy.lb.subset_hint", {}).get(
            "x-gateway-destination-endpoint-subset"
        )
        dest = ",".join(subset) if subset else self.picks[prompt]
        return Reply(
            set_headers={"x-gateway-destination-endpoint": dest},
            dynamic_metadata={"envoy.lb": {"x-gateway-destination-endpoint": dest}},
        )

    async def on_response_headers(self, headers: Headers, end_of_stream: bool) -> Reply:
        served = self.context.metadata.get("envoy.lb", {}).get(
            "x-gateway-destination-endpoint-served", ""
        )
        self.served_seen.append(served)
        return Reply(set_headers={"x-served-by": served})

    async def on_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        self.response_chunks.append(chunk)


@pytest.fixture
async def stack() -> AsyncIterator[dict[str, Any]]:
    ports = {name: _free_port() for name in ("e1", "e2", "gw")}
    dead = f"127.0.0.1:{_free_port()}"
    e1, e2 = f"127.0.0.1:{ports['e1']}", f"127.0.0.1:{ports['e2']}"
    resets: list[int] = []

    async def reset_before_answering(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")  # takes the request, then dies without a response
        resets.append(1)
        w.transport.abort()

    resetter = await asyncio.start_server(reset_before_answering, "127.0.0.1", 0)
    reset_ep = f"127.0.0.1:{resetter.sockets[0].getsockname()[1]}"
    flaky_conns: list[int] = []

    async def drop_first_connection(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # What a keep-alive connection the server closed meanwhile looks like to the gateway:
        # the request goes out and the connection ends with no response.
        await r.readuntil(b"\r\n\r\n")
        flaky_conns.append(1)
        if len(flaky_conns) == 1:
            w.transport.abort()
            return
        body = json.dumps({"engine": "flaky"}).encode()
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await w.drain()
        w.close()

    flaky = await asyncio.start_server(drop_first_connection, "127.0.0.1", 0)
    flaky_ep = f"127.0.0.1:{flaky.sockets[0].getsockname()[1]}"

    async def burst(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # Three SSE events and the chunked body's end, in one write: one socket read for the
        # gateway, as when an engine outruns its proxy.
        await r.readuntil(b"\r\n\r\n")
        events = [b"data: %d\n\n" % i for i in range(3)] + [b"data: [DONE]\n\n"]
        w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
            + b"0\r\n\r\n"
        )
        await w.drain()
        w.close()

    burster = await asyncio.start_server(burst, "127.0.0.1", 0)
    burst_ep = f"127.0.0.1:{burster.sockets[0].getsockname()[1]}"
    picks = {
        "one": e1,
        "two": e2,
        "slow": e1,
        "fallback": f"{dead},{e2}",
        "nothing": dead,
        "reset": f"{reset_ep},{e2}",
        "flaky": flaky_ep,
        "burst": burst_ep,
    }
    served: list[str] = []
    response_chunks: list[bytes] = []

    def epp_factory(ctx: StreamContext) -> ExtProcStream:
        s = FakeEPP(ctx)
        s.picks, s.served_seen, s.response_chunks = picks, served, response_chunks
        return s

    bbr_srv = GrpcServer("127.0.0.1:0", [ext_proc_registrar(FakeBBR)[1]])
    epp_srv = GrpcServer("127.0.0.1:0", [ext_proc_registrar(epp_factory)[1]])
    await bbr_srv.start()
    await epp_srv.start()
    cfg = GatewayConfig.model_validate(
        {
            "port": ports["gw"],
            "bbr": {"target": f"127.0.0.1:{bbr_srv.port}", "response_header_mode": "SKIP"},
            "pools": [
                {
                    "name": "pool-a",
                    "models": ["llama", "llama-lora"],
                    "epp": {
                        "target": f"127.0.0.1:{epp_srv.port}",
                        "response_body_mode": "FULL_DUPLEX_STREAMED",
                        "message_timeout_s": EPP_MESSAGE_TIMEOUT_S,
                    },
                }
            ],
        }
    )
    setup_tracing("gateway-test", exporter=InMemorySpanExporter())
    gw = Gateway(cfg)
    async with (
        _http_server(_engine_app("e1"), ports["e1"]),
        _http_server(_engine_app("e2"), ports["e2"]),
        _http_server(gw.app, ports["gw"]),
    ):
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports['gw']}", timeout=10
        ) as client:
            yield {
                "client": client,
                "e1": e1,
                "e2": e2,
                "served": served,
                "resets": resets,
                "flaky": flaky_conns,
                "response_chunks": response_chunks,
            }
    resetter.close()
    flaky.close()
    burster.close()
    await bbr_srv.stop(0)
    await epp_srv.stop(0)


def _chat(prompt: str, model: str = "llama", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def test_routes_through_bbr_and_epp_to_the_picked_engine(stack: dict[str, Any]) -> None:
    client = stack["client"]
    for prompt, engine in (("one", "e1"), ("two", "e2")):
        r = await client.post(
            "/v1/chat/completions", json=_chat(prompt), headers={"x-request-id": "r-1"}
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["engine"] == engine
        assert doc["headers"]["x-gateway-model-name"] == "llama"
        assert doc["headers"]["x-gateway-destination-endpoint"] == stack[engine]
        assert doc["headers"]["x-request-id"] == "r-1"
        assert doc["headers"]["traceparent"].startswith("00-")  # the gateway span propagates
        assert r.headers["x-served-by"] == stack[engine]


async def test_the_path_and_query_reach_the_engine_as_the_client_sent_them(
    stack: dict[str, Any],
) -> None:
    r = await stack["client"].post(
        "/v1/chat/completions?api-version=2024%2F10&x=a+b", json=_chat("one")
    )
    assert r.status_code == 200, r.text
    assert r.json()["raw_path"] == "/v1/chat/completions"
    assert r.json()["query"] == "api-version=2024%2F10&x=a+b"


async def test_falls_back_along_the_picked_list_and_reports_the_served_endpoint(
    stack: dict[str, Any],
) -> None:
    r = await stack["client"].post("/v1/chat/completions", json=_chat("fallback"))
    assert r.status_code == 200
    assert r.json()["engine"] == "e2"
    assert stack["served"][-1] == stack["e2"]


async def test_an_upstream_reset_before_answering_falls_back_to_the_next_endpoint(
    stack: dict[str, Any],
) -> None:
    r = await stack["client"].post("/v1/chat/completions", json=_chat("reset"))
    # The first endpoint really took the request and dropped it, twice: once more on a fresh
    # connection, in case the first was a stale keep-alive one.
    assert stack["resets"] == [1, 1]
    assert r.status_code == 200
    assert r.json()["engine"] == "e2"
    assert stack["served"][-1] == stack["e2"]


async def test_a_connection_closed_without_an_answer_is_retried_once_on_the_same_endpoint(
    stack: dict[str, Any],
) -> None:
    # One endpoint, no fallback: before the retry this was a 503.
    r = await stack["client"].post("/v1/chat/completions", json=_chat("flaky"))
    assert stack["flaky"] == [1, 1]
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "flaky"


async def test_no_reachable_endpoint_is_a_503(stack: dict[str, Any]) -> None:
    r = await stack["client"].post("/v1/chat/completions", json=_chat("nothing"))
    assert r.status_code == 503
    assert "upstream connect error" in r.json()["error"]["message"]


async def test_unknown_model_is_an_openai_404(stack: dict[str, Any]) -> None:
    r = await stack["client"].post("/v1/chat/completions", json=_chat("one", model="gpt-9"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["message"] == "The model `gpt-9` does not exist." and err["code"] == 404


async def test_processor_local_reply_reaches_the_client(stack: dict[str, Any]) -> None:
    r = await stack["client"].post("/v1/chat/completions", json=_chat("shed"))
    assert r.status_code == 429
    assert r.json()["error"]["message"] == "shed"


async def test_streaming_response_is_streamed_back(stack: dict[str, Any]) -> None:
    events = []
    async with stack["client"].stream(
        "POST", "/v1/chat/completions", json=_chat("two", stream=True)
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["i"] for e in events[:-1]] == [0, 1, 2]
    assert {json.loads(e)["engine"] for e in events[:-1]} == {"e2"}


async def test_body_bytes_that_arrive_together_reach_the_epp_as_one_message(
    stack: dict[str, Any],
) -> None:
    """Envoy's HTTP/1 codec dispatches the body bytes of one read as one piece, whatever the
    chunked encoding's boundaries; one message per chunk would cost the EPP four round trips
    here instead of one."""
    async with stack["client"].stream(
        "POST", "/v1/chat/completions", json=_chat("burst", stream=True)
    ) as r:
        assert r.status_code == 200
        body = b"".join([c async for c in r.aiter_bytes()])
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    data_chunks = [c for c in stack["response_chunks"] if c]
    assert data_chunks == [body]


async def test_a_first_token_later_than_the_message_timeout_streams_whole(
    stack: dict[str, Any],
) -> None:
    """Envoy runs no message timer on a FULL_DUPLEX_STREAMED response body; neither may the
    gateway, or a queued request's 200 is cut off after its headers."""
    assert SLOW_FIRST_TOKEN_S > EPP_MESSAGE_TIMEOUT_S
    async with stack["client"].stream(
        "POST", "/v1/chat/completions", json=_chat("slow", stream=True)
    ) as r:
        assert r.status_code == 200
        events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["i"] for e in events[:-1]] == [0, 1, 2]


async def test_subset_hint_reaches_the_epp_as_metadata(stack: dict[str, Any]) -> None:
    r = await stack["client"].post(
        "/v1/chat/completions", json=_chat("one"), headers={"x-llmd-subset-hint": stack["e2"]}
    )
    assert r.status_code == 200 and r.json()["engine"] == "e2"
