"""Both ends against hand-built protobuf messages, without the other end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc
from llmd_sdk.extproc import BodyMode, EnvoyClient, FilterConfig, GrpcServer, StreamContext
from llmd_sdk.extproc.messages import apply_header_mutation, headers_to_dict

from .conftest import ModelRouter


def _router() -> ModelRouter:
    s = ModelRouter(StreamContext())
    s.closed, s.seen_response_chunks = [], []
    return s


async def _feed(*msgs: ext_proc.ProcessingRequest) -> AsyncIterator[ext_proc.ProcessingRequest]:
    for m in msgs:
        yield m


def _hdrs(end_of_stream: bool = False, mode: BodyMode | None = None) -> ext_proc.ProcessingRequest:
    req = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=envoy_base.HeaderMap(
                headers=[
                    envoy_base.HeaderValue(key=":path", raw_value=b"/v1/completions"),
                    envoy_base.HeaderValue(key="Content-Type", value="application/json"),
                ]
            ),
            end_of_stream=end_of_stream,
        )
    )
    if mode is not None:
        req.protocol_config.request_body_mode = int(mode)  # type: ignore[assignment]
    return req


def _body(data: bytes, eos: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=data, end_of_stream=eos))


def test_headers_read_raw_value_and_value_and_join_repeats() -> None:
    hm = envoy_base.HeaderMap(
        headers=[
            envoy_base.HeaderValue(key="X-A", raw_value=b"1"),
            envoy_base.HeaderValue(key="x-a", value="2"),
            envoy_base.HeaderValue(key=":authority", raw_value=b"h"),
        ]
    )
    assert headers_to_dict(hm) == {"x-a": "1, 2", ":authority": "h"}


def test_apply_header_mutation_follows_append_actions() -> None:
    hvo = envoy_base.HeaderValueOption
    mut = ext_proc.HeaderMutation(
        set_headers=[
            hvo(
                header=envoy_base.HeaderValue(key="a", raw_value=b"new"),
                append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD,
            ),
            hvo(
                header=envoy_base.HeaderValue(key="b", raw_value=b"x"),
                append_action=hvo.ADD_IF_ABSENT,
            ),
            hvo(
                header=envoy_base.HeaderValue(key="c", raw_value=b"x"),
                append_action=hvo.OVERWRITE_IF_EXISTS,
            ),
            hvo(
                header=envoy_base.HeaderValue(key="d", raw_value=b"2"),
                append_action=hvo.APPEND_IF_EXISTS_OR_ADD,
            ),
        ],
        remove_headers=["gone"],
    )
    headers = {"a": "old", "b": "keep", "d": "1", "gone": "x"}
    apply_header_mutation(headers, mut)
    assert headers == {"a": "new", "b": "keep", "d": "1, 2"}


async def test_buffered_choreography_message_by_message() -> None:
    body = b'{"model": "m1"}'
    out = [r async for r in _router().run(_feed(_hdrs(mode=BodyMode.BUFFERED), _body(body, True)))]
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert not out[0].request_headers.response.HasField("header_mutation")
    common = out[1].request_body.response
    assert common.clear_route_cache
    hv = common.header_mutation.set_headers[0].header
    assert (hv.key, hv.raw_value) == ("x-gateway-model-name", b"m1")
    assert (
        out[1]
        .dynamic_metadata.fields["envoy.lb"]
        .struct_value.fields["x-gateway-destination-endpoint"]
        .string_value
        == "10.0.0.1:8000"
    )


async def test_full_duplex_holds_the_headers_response_until_the_body_is_complete() -> None:
    msgs = [
        _hdrs(mode=BodyMode.FULL_DUPLEX_STREAMED),
        _body(b'{"model"', False),
        _body(b': "m2"}', True),
    ]
    out = [r async for r in _router().run(_feed(*msgs))]
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    assert out[0].request_headers.response.header_mutation.set_headers[0].header.raw_value == b"m2"
    sr = out[1].request_body.response.body_mutation.streamed_response
    assert (sr.body, sr.end_of_stream) == (b'{"model": "m2"}', True)


async def test_without_protocol_config_the_default_mode_applies() -> None:
    out = [r async for r in _router().run(_feed(_hdrs(), _body(b'{"model": "m"}', True)))]
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]


async def test_headers_only_request_is_decided_at_the_headers() -> None:
    out = [r async for r in _router().run(_feed(_hdrs(end_of_stream=True)))]
    assert len(out) == 1 and out[0].WhichOneof("response") == "request_headers"


class _Canned(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers every message with the next canned response, whatever it is."""

    def __init__(self, responses: list[ext_proc.ProcessingResponse]) -> None:
        self.responses = responses
        self.received: list[ext_proc.ProcessingRequest] = []

    async def Process(self, request_iterator, context):  # type: ignore[no-untyped-def]
        it = iter(self.responses)
        async for req in request_iterator:
            self.received.append(req)
            nxt = next(it, None)
            if nxt is None:
                return
            yield nxt


async def _serve(servicer: object) -> GrpcServer:
    def register(server: grpc.aio.Server) -> None:
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)

    srv = GrpcServer("127.0.0.1:0", [register])
    await srv.start()
    return srv


def _headers_resp(clear: bool, mutate: bool) -> ext_proc.ProcessingResponse:
    cr = ext_proc.CommonResponse(clear_route_cache=clear)
    if mutate:
        cr.header_mutation.set_headers.add(header=envoy_base.HeaderValue(key="x-k", raw_value=b"v"))
    return ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse(response=cr))


@pytest.mark.parametrize(("mutate", "cleared"), [(True, True), (False, False)])
async def test_client_clears_route_cache_only_with_a_header_mutation(
    mutate: bool, cleared: bool
) -> None:
    canned = _Canned([_headers_resp(clear=True, mutate=mutate)])
    srv = await _serve(canned)
    try:
        async with EnvoyClient(
            [FilterConfig("f", f"127.0.0.1:{srv.port}", request_body_mode=BodyMode.NONE)]
        ) as c:
            async with c.exchange() as ex:
                out = await ex.process_request({":path": "/"}, [b"{}"])
        assert out.route_cache_cleared is cleared
        assert ("x-k" in out.headers) is mutate
        first = canned.received[0]
        assert first.protocol_config.request_body_mode == BodyMode.NONE
        assert first.request_headers.end_of_stream is False
    finally:
        await srv.stop(0)


async def test_client_reports_immediate_response_from_hand_built_message() -> None:
    imm = ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status={"code": 429}, body=json.dumps({"error": {"message": "shed"}}).encode()
        )
    )
    srv = await _serve(_Canned([imm]))
    try:
        async with EnvoyClient([FilterConfig("epp", f"127.0.0.1:{srv.port}")]) as c:
            async with c.exchange() as ex:
                out = await ex.process_request({":path": "/"}, [b"{}"])
        assert out.local_reply is not None
        assert (out.local_reply.status, out.local_reply.filter_name) == (429, "epp")
    finally:
        await srv.stop(0)


class _Silent(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for _ in request_iterator:
            pass
        if False:  # pragma: no cover - makes this an async generator that never answers
            yield


@pytest.mark.parametrize(("allow", "status"), [(False, 504), (True, None)])
async def test_a_silent_processor_times_out_unless_failure_mode_allow(
    allow: bool, status: int | None
) -> None:
    srv = await _serve(_Silent())
    try:
        cfg = FilterConfig(
            "slow", f"127.0.0.1:{srv.port}", message_timeout=0.2, failure_mode_allow=allow
        )
        async with EnvoyClient([cfg]) as c:
            ex = c.exchange()
            out = await ex.process_request({":path": "/"}, [b"{}"])
            await ex.close(cancel=True)
        if status is None:
            assert out.local_reply is None and out.body == b"{}"
        else:
            assert out.local_reply is not None and out.local_reply.status == status
    finally:
        await srv.stop(0)


async def test_an_exchange_closes_cleanly_after_a_processor_timed_out() -> None:
    # A timed-out read cancels the gRPC call; a plain close() must not then raise the
    # call's CancelledError into the caller (the dev gateway answered a bare 500 with it).
    srv = await _serve(_Silent())
    try:
        cfg = FilterConfig("slow", f"127.0.0.1:{srv.port}", message_timeout=0.2)
        async with EnvoyClient([cfg]) as c:
            ex = c.exchange()
            out = await ex.process_request({":path": "/"}, [b"{}"])
            await ex.close()
        assert out.local_reply is not None and out.local_reply.status == 504
    finally:
        await srv.stop(0)


async def test_an_unreachable_processor_is_a_500() -> None:
    async with EnvoyClient([FilterConfig("gone", "127.0.0.1:1", message_timeout=1.0)]) as c:
        ex = c.exchange()
        out = await ex.process_request({":path": "/"}, [b"{}"])
        await ex.close(cancel=True)
    assert out.local_reply is not None and out.local_reply.status in (500, 504)


def _trailers() -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers())


async def test_plain_streamed_answers_each_chunk_as_it_comes() -> None:
    router = _router()
    first = await router.dispatch(_hdrs(mode=BodyMode.STREAMED))
    assert [r.WhichOneof("response") for r in first] == ["request_headers"]
    # The first chunk is answered at once, before the body is complete.
    mid = await router.dispatch(_body(b'{"model": ', False))
    assert [r.WhichOneof("response") for r in mid] == ["request_body"]
    last = await router.dispatch(_body(b'"m3"}', True))
    assert [r.WhichOneof("response") for r in last] == ["request_body"]
    assert not last[0].request_body.response.HasField("header_mutation")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (BodyMode.BUFFERED, ["request_headers", "request_body", "request_trailers"]),
        (
            BodyMode.FULL_DUPLEX_STREAMED,
            ["request_headers", "request_body", "request_trailers"],
        ),
        (BodyMode.STREAMED, ["request_headers", "request_body", "request_trailers"]),
    ],
)
async def test_request_trailers_end_the_body(mode: BodyMode, expected: list[str]) -> None:
    msgs = [_hdrs(mode=mode), _body(b'{"model": "m4"}', False), _trailers()]
    out = [r async for r in _router().run(_feed(*msgs))]
    assert [r.WhichOneof("response") for r in out] == expected
    if mode == BodyMode.BUFFERED:
        hv = out[1].request_body.response.header_mutation.set_headers[0].header
        assert hv.raw_value == b"m4"
    if mode == BodyMode.FULL_DUPLEX_STREAMED:
        assert (
            out[0].request_headers.response.header_mutation.set_headers[0].header.raw_value == b"m4"
        )
        sr = out[1].request_body.response.body_mutation.streamed_response
        # The body never said end_of_stream (trailers follow), so the answer does not either.
        assert (sr.body, sr.end_of_stream) == (b'{"model": "m4"}', False)


async def test_immediate_reply_at_trailers_ends_the_exchange() -> None:
    msgs = [_hdrs(mode=BodyMode.BUFFERED), _body(b"{bad", False), _trailers()]
    out = [r async for r in _router().run(_feed(*msgs))]
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "immediate_response"]
    assert out[1].immediate_response.status.code == 400
