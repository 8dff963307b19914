"""The client's response-body streaming, as Envoy streams it: chunks go to the processor as they
arrive, end_of_stream as Envoy's codec marks it, and no message timer in FULL_DUPLEX_STREAMED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from llmd_sdk.contracts import ext_proc, ext_proc_grpc
from llmd_sdk.extproc import BodyMode, EnvoyClient, ExtProcStream, FilterConfig, StreamContext

from .conftest import serving

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
STREAMING = [BodyMode.STREAMED, BodyMode.FULL_DUPLEX_STREAMED]


class Recorder(ExtProcStream):
    """Passes everything; records each response body message as (chunk, end_of_stream)."""

    events: list[tuple[bytes, bool]]

    async def on_response_chunk(self, chunk: bytes, end_of_stream: bool) -> None:
        self.events.append((chunk, end_of_stream))


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[tuple[bytes, bool]]]]:
    events: list[tuple[bytes, bool]] = []

    def factory(ctx: StreamContext) -> ExtProcStream:
        s = Recorder(ctx)
        s.events = events
        return s

    async with serving(factory) as target:
        yield target, events


def _cfg(target: str, mode: BodyMode, message_timeout: float = 5.0) -> FilterConfig:
    return FilterConfig(
        name="recorder",
        target=target,
        request_body_mode=BodyMode.BUFFERED,
        response_body_mode=mode,
        message_timeout=message_timeout,
    )


async def _open(client: EnvoyClient, headers: dict[str, str]) -> object:
    ex = client.exchange()
    out = await ex.process_request(HEADERS, [b"{}"])
    assert out.local_reply is None
    rh = await ex.process_response_headers(200, headers, end_of_stream=False)
    assert rh.local_reply is None
    return ex


@pytest.mark.parametrize("mode", STREAMING, ids=lambda m: m.name)
async def test_each_chunk_reaches_the_client_before_the_next_one_exists(
    recorder: tuple[str, list[tuple[bytes, bool]]], mode: BodyMode
) -> None:
    target, _ = recorder
    released = asyncio.Event()

    async def upstream() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await released.wait()  # the second chunk exists only once the first came out
        yield b"data: second\n\n"

    async with EnvoyClient([_cfg(target, mode)]) as client:
        ex = await _open(client, {"content-type": "text/event-stream"})
        body = ex.process_response_body(upstream())  # type: ignore[attr-defined]
        async with asyncio.timeout(5):
            first = await anext(body)
            released.set()
            rest = [c async for c in body]
        await ex.close()  # type: ignore[attr-defined]
    assert first == b"data: first\n\n"
    assert rest == [b"data: second\n\n"]


@pytest.mark.parametrize(
    ("headers", "content_length", "expected"),
    [
        # chunked: Envoy learns of the end after the last data, an empty end_of_stream follows
        (
            {"content-type": "text/event-stream"},
            None,
            [(b"abc", False), (b"de", False), (b"", True)],
        ),
        # content-length: the codec marks the last data chunk itself
        ({"content-length": "5"}, 5, [(b"abc", False), (b"de", True)]),
    ],
    ids=["chunked", "content-length"],
)
@pytest.mark.parametrize("mode", STREAMING, ids=lambda m: m.name)
async def test_end_of_stream_is_marked_as_envoys_codec_marks_it(
    recorder: tuple[str, list[tuple[bytes, bool]]],
    mode: BodyMode,
    headers: dict[str, str],
    content_length: int | None,
    expected: list[tuple[bytes, bool]],
) -> None:
    target, events = recorder

    async def upstream() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"de"

    async with EnvoyClient([_cfg(target, mode)]) as client:
        ex = await _open(client, headers)
        body = ex.process_response_body(upstream(), content_length)  # type: ignore[attr-defined]
        got = [c async for c in body]
        await ex.close()  # type: ignore[attr-defined]
    assert got == [b"abc", b"de"]
    assert events == expected


async def test_full_duplex_waits_on_a_slow_upstream_past_the_message_timeout(
    recorder: tuple[str, list[tuple[bytes, bool]]],
) -> None:
    """Envoy starts no message timer in FULL_DUPLEX_STREAMED: a long time to first token (a
    queued request) must not turn into a 504 in the middle of a 200 response."""
    target, _ = recorder
    gap = asyncio.Event()

    async def upstream() -> AsyncIterator[bytes]:
        yield b"data: early\n\n"
        # Wait well past the 0.1 s message timeout (the event is never set).
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await gap.wait()
        yield b"data: late\n\n"

    cfg = _cfg(target, BodyMode.FULL_DUPLEX_STREAMED, message_timeout=0.1)
    async with EnvoyClient([cfg]) as client:
        ex = await _open(client, {"content-type": "text/event-stream"})
        got = [c async for c in ex.process_response_body(upstream())]  # type: ignore[attr-defined]
        await ex.close()  # type: ignore[attr-defined]
    assert got == [b"data: early\n\n", b"data: late\n\n"]


class _ClosesAtFirstResponseChunk(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers the headers and the request body, then ends its stream at the first response
    body message: Envoy carries on without the processor."""

    async def Process(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "response_body":
                return
            field = {"request_headers": "request_headers", "response_headers": "response_headers"}
            if kind in field:
                yield ext_proc.ProcessingResponse(
                    **{kind: ext_proc.HeadersResponse(response=ext_proc.CommonResponse())}
                )
            elif kind == "request_body":
                yield ext_proc.ProcessingResponse(
                    request_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
                )


@pytest.mark.parametrize("mode", [BodyMode.STREAMED, BodyMode.BUFFERED], ids=lambda m: m.name)
async def test_a_processor_leaving_mid_body_lets_the_body_through(mode: BodyMode) -> None:
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(_ClosesAtFirstResponseChunk(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def upstream() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    try:
        async with EnvoyClient([_cfg(f"127.0.0.1:{port}", mode)]) as client:
            ex = await _open(client, {"content-type": "text/event-stream"})
            got = [c async for c in ex.process_response_body(upstream())]  # type: ignore[attr-defined]
            await ex.close()  # type: ignore[attr-defined]
    finally:
        await server.stop(0)
    assert b"".join(got) == b"abc"


class UpstreamBroke(Exception):
    pass


@pytest.mark.parametrize("mode", STREAMING, ids=lambda m: m.name)
async def test_an_upstream_dying_mid_body_ends_the_exchange_at_once(
    recorder: tuple[str, list[tuple[bytes, bool]]], mode: BodyMode
) -> None:
    """No message timer runs in FULL_DUPLEX_STREAMED, so nothing but the upstream's failure
    can end a read that waits for the processor's next message: it must, at once."""
    target, _ = recorder

    async def upstream() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        raise UpstreamBroke("peer closed connection without sending complete message body")

    cfg = _cfg(target, mode, message_timeout=30.0)
    got: list[bytes] = []
    async with EnvoyClient([cfg]) as client:
        ex = await _open(client, {"content-type": "text/event-stream"})
        with pytest.raises(UpstreamBroke):
            async with asyncio.timeout(5):  # far below the message timeout
                async for chunk in ex.process_response_body(upstream()):  # type: ignore[attr-defined]
                    got.append(chunk)
        await ex.close(cancel=True)  # type: ignore[attr-defined]
    # The first chunk may or may not have come back through the processor before the stream
    # was cancelled (Envoy too resets what is in flight); nothing else may have.
    assert got in ([], [b"data: one\n\n"])
