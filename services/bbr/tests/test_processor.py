"""BBR driven through the SDK's Envoy-semantics client, in every body mode."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import grpc
import httpx
import pytest
from bbr_helpers import PLAIN_STREAMED, ROUTABLE, LogSink, Mode, sample, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmd_bbr.processor import BBRStream
from llmd_bbr.server import BBRApp
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc
from llmd_sdk.extproc import BodyMode, EnvoyClient, FilterConfig

CHAT = json.dumps(
    {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [{"role": "user", "content": "héllo ✓ 你好"}],
        "max_tokens": 8,
    },
    ensure_ascii=False,
).encode()
HEADERS = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}
MODEL_H = "x-gateway-model-name"
BASE_H = "x-gateway-base-model-name"


def split(body: bytes, at: int) -> list[bytes]:
    return [p for p in (body[:at], body[at:]) if p]


async def _one(
    app: BBRApp, mode: Mode, body_chunks: list[bytes], headers: dict[str, str] | None = None
) -> Any:
    async with EnvoyClient([mode.filter(f"127.0.0.1:{app.grpc_port}")]) as client:
        async with client.exchange() as ex:
            return await ex.process_request(headers or HEADERS, body_chunks)


# ----------------------------------------------------------------------------- routing
@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_every_split_routes_and_keeps_the_body(
    bbr: tuple[BBRApp, LogSink], mode: Mode
) -> None:
    app, _ = bbr
    async with EnvoyClient([mode.filter(f"127.0.0.1:{app.grpc_port}")]) as client:
        for at in range(len(CHAT) + 1):
            async with client.exchange() as ex:
                out = await ex.process_request(HEADERS, split(CHAT, at))
            assert out.local_reply is None, (at, out.local_reply)
            assert out.headers[MODEL_H] == "meta-llama/Llama-3.1-8B-Instruct", at
            assert out.headers[BASE_H] == "meta-llama/Llama-3.1-8B-Instruct", at
            assert out.route_cache_cleared, at
            assert out.body == CHAT, f"body changed at split {at}"
    assert sample(app, "bbr_requests_total", outcome="routed") == len(CHAT) + 1
    if mode.body_mode == BodyMode.FULL_DUPLEX_STREAMED:
        # Splits after the model's closing quote were routed before the body ended.
        early = sample(app, "bbr_early_decisions_total")
        end_of_model = CHAT.index(b'",') + 1
        assert early == len(CHAT) - end_of_model


# BUFFERED is left out: Envoy sends it one body message, however the body arrived.
@pytest.mark.parametrize("mode", ROUTABLE[1:], ids=lambda m: m.name)
async def test_every_three_way_split_in_streamed_modes(
    bbr: tuple[BBRApp, LogSink], mode: Mode
) -> None:
    app, _ = bbr
    body = b'{"model":"critic","prompt":"\xc3\xa9"}'
    headers = {**HEADERS, "content-length": str(len(body))}
    async with EnvoyClient([mode.filter(f"127.0.0.1:{app.grpc_port}")]) as client:
        for i in range(1, len(body)):
            for j in range(i + 1, len(body)):
                async with client.exchange() as ex:
                    out = await ex.process_request(headers, [body[:i], body[i:j], body[j:]])
                assert out.local_reply is None
                assert out.body == b'{"model":"movie-critique","prompt":"\xc3\xa9"}', (i, j)
                assert out.headers[MODEL_H] == "movie-critique"
                assert out.headers["content-length"] == str(len(out.body)), (i, j)


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_alias_rewrite_at_every_split_with_content_length(
    bbr: tuple[BBRApp, LogSink], mode: Mode
) -> None:
    app, _ = bbr
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "model": "critic"}).encode()
    expected = body.replace(b'"critic"', b'"movie-critique"')
    headers = {**HEADERS, "content-length": str(len(body))}
    for at in range(len(body) + 1):
        out = await _one(app, mode, split(body, at), headers)
        assert out.local_reply is None
        assert out.body == expected, at
        assert out.headers["content-length"] == str(len(expected))
        assert out.headers[MODEL_H] == "movie-critique"
        assert out.headers[BASE_H] == "meta-llama/Llama-3.1-8B-Instruct"
    assert sample(app, "bbr_body_rewrites_total") == len(body) + 1


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_unicode_alias_and_model_names(bbr: tuple[BBRApp, LogSink], mode: Mode) -> None:
    app, _ = bbr
    # The client escapes non-ASCII (Python's default); BBR writes UTF-8 back.
    body = json.dumps({"model": "modèle", "prompt": "✓ 你好"}).encode()
    for at in range(len(body) + 1):
        out = await _one(app, mode, split(body, at))
        assert out.headers[MODEL_H] == "modèle-✓-cible"
        assert json.loads(out.body) == {"model": "modèle-✓-cible", "prompt": "✓ 你好"}
        assert BASE_H not in out.headers
    raw = '{"model": "未知-模型", "prompt": "x"}'.encode()
    out = await _one(app, mode, [raw])
    assert out.headers[MODEL_H] == "未知-模型"
    assert out.body == raw


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_client_sent_base_model_header_is_not_trusted(
    bbr: tuple[BBRApp, LogSink], mode: Mode
) -> None:
    app, _ = bbr
    spoofed = {**HEADERS, BASE_H: "premium-pool"}
    out = await _one(app, mode, [b'{"model": "unknown"}'], spoofed)
    assert out.headers[MODEL_H] == "unknown"
    assert BASE_H not in out.headers
    out = await _one(app, mode, [b'{"model": "ski-resorts"}'], spoofed)
    assert out.headers[BASE_H] == "meta-llama/Llama-3.1-8B-Instruct"


async def test_plain_streamed_mode_cannot_route_and_says_so(bbr: tuple[BBRApp, LogSink]) -> None:
    app, sink = bbr
    for _ in range(3):
        out = await _one(app, PLAIN_STREAMED, [CHAT[:10], CHAT[10:]])
        assert out.local_reply is None
        assert MODEL_H not in out.headers  # Envoy ignores body-response header mutations here
        assert out.body == CHAT
    assert sample(app, "bbr_requests_total", outcome="headers_dropped") == 3
    warnings = [e for e in sink.events() if "send_body_without_waiting" in e["event"]]
    assert len(warnings) == 1  # once per process, not per request


@pytest.mark.parametrize("mode", [*ROUTABLE, PLAIN_STREAMED], ids=lambda m: m.name)
async def test_requests_without_body_pass_untouched(
    bbr: tuple[BBRApp, LogSink], mode: Mode
) -> None:
    app, _ = bbr
    get = {":method": "GET", ":path": "/v1/models", "x-gateway-model-name": "client-set"}
    out = await _one(app, mode, [], get)
    assert out.local_reply is None
    assert out.headers == get
    assert out.body == b""
    assert sample(app, "bbr_requests_total", outcome="passthrough") == 1


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_multipart_bodies_are_not_read(bbr: tuple[BBRApp, LogSink], mode: Mode) -> None:
    app, _ = bbr
    form = b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--x--\r\n'
    headers = {**HEADERS, "content-type": "multipart/form-data; boundary=x"}
    out = await _one(app, mode, [form[:7], form[7:]], headers)
    assert out.local_reply is None and out.body == form
    assert MODEL_H not in out.headers
    assert sample(app, "bbr_requests_total", outcome="skipped") == 1


# ------------------------------------------------------------------------------ errors
BAD = [
    (b"{not json", 400, "invalid_json", "request body is not valid JSON"),
    (b"[1, 2]", 400, "invalid_json", "must be a JSON object"),
    (b'{"model": 7}', 400, "invalid_model", "model must be a string, got a number"),
    (b'{"model": {"a": 1}, "prompt": "x"}', 400, "invalid_model", "got an object"),
    (b'{"model": "bad\\u0000name"}', 400, "invalid_model", "control characters"),
    (b'{"prompt": "x"}', 400, "missing_model", "model is missing"),
    (b'{"model": "ok", "x": [1,}', 400, "invalid_json", "not valid JSON"),
]


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
@pytest.mark.parametrize(("body", "status", "outcome", "message"), BAD)
async def test_bad_input_is_an_openai_error_with_a_logged_request_id(
    bbr: tuple[BBRApp, LogSink], mode: Mode, body: bytes, status: int, outcome: str, message: str
) -> None:
    app, sink = bbr
    headers = {**HEADERS, "x-request-id": "req-42"}
    for at in (0, len(body) // 2, len(body) - 1):
        out = await _one(app, mode, split(body, at), headers)
        reply = out.local_reply
        assert reply is not None, at
        assert reply.status == status
        assert reply.headers["content-type"] == "application/json"
        error = json.loads(reply.body)["error"]
        assert message in error["message"]
        assert error["type"] == "BadRequestError" and error["code"] == status
        assert reply.details == f"bbr_{outcome}"
    logged = sink.events("request rejected")
    assert len(logged) == 3
    assert all(e["request_id"] == "req-42" and e["reason"] == outcome for e in logged)
    assert sample(app, "bbr_requests_total", outcome=outcome) == 3
    # The server keeps serving.
    ok = await _one(app, mode, [CHAT])
    assert ok.headers[MODEL_H] == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_body_over_the_limit_is_a_413(make_app: Any, mode: Mode) -> None:
    app, sink = await make_app(max_body_bytes=1000)
    body = json.dumps({"model": "llama", "prompt": "x" * 2000}).encode()
    chunks = [body[i : i + 300] for i in range(0, len(body), 300)]
    out = await _one(app, mode, chunks, {**HEADERS, "x-request-id": "big-1"})
    assert out.local_reply is not None and out.local_reply.status == 413
    assert "exceeds 1000 bytes" in json.loads(out.local_reply.body)["error"]["message"]
    assert sink.events("request rejected")[0]["request_id"] == "big-1"
    assert sample(app, "bbr_requests_total", outcome="too_large") == 1
    ok = await _one(app, mode, [b'{"model": "llama"}'])
    assert ok.local_reply is None


async def test_full_duplex_rejects_a_body_that_turns_bad_after_early_routing(
    bbr: tuple[BBRApp, LogSink],
) -> None:
    app, _ = bbr
    mode = ROUTABLE[2]
    cases = {
        b'{"model": "llama", "prompt": "x", oops}': "not valid JSON",
        b'{"model": "llama", "prompt": "x", "model": "other"}': "repeats the top-level model",
    }
    for body, message in cases.items():
        out = await _one(app, mode, [body[:20], body[20:]])
        assert out.local_reply is not None and out.local_reply.status == 400
        assert message in json.loads(out.local_reply.body)["error"]["message"]
    # Repeated with the same value is fine.
    same = b'{"model": "llama", "prompt": "x", "model": "llama"}'
    out = await _one(app, mode, [same[:20], same[20:]])
    assert out.local_reply is None and out.body == same
    assert sample(app, "bbr_early_decisions_total") == 3


async def test_missing_model_can_be_let_through(make_app: Any) -> None:
    app, _ = await make_app(require_model=False)
    for mode in ROUTABLE:
        out = await _one(app, mode, [b'{"input": "x"}'])
        assert out.local_reply is None and MODEL_H not in out.headers
    assert sample(app, "bbr_requests_total", outcome="no_model") == 3
    assert sample(app, "bbr_model_not_in_body_total") == 3


async def test_early_routing_can_be_turned_off(make_app: Any) -> None:
    app, _ = await make_app(early_scan_bytes=0)
    out = await _one(app, ROUTABLE[2], [CHAT[:60], CHAT[60:]])
    assert out.headers[MODEL_H] == "meta-llama/Llama-3.1-8B-Instruct" and out.body == CHAT
    assert sample(app, "bbr_early_decisions_total") == 0


@pytest.mark.parametrize("mode", ROUTABLE[1:], ids=lambda m: m.name)
async def test_early_routing_looks_only_at_the_start_of_the_body(make_app: Any, mode: Mode) -> None:
    app, _ = await make_app(early_scan_bytes=1000)
    filler = [{"role": "user", "content": "x" * 100}] * 30

    def chunks(doc: dict[str, Any]) -> list[bytes]:
        body = json.dumps(doc).encode()
        return [body[i : i + 7] for i in range(0, len(body), 7)]

    cases = [
        # (body, routed early?)
        ({"model": "llama", "messages": filler}, True),
        ({"messages": filler[:5], "model": "llama", "n": 1, "messages2": filler}, True),
        ({"messages": filler, "model": "llama"}, False),  # as the OpenAI SDK orders it
        ({"messages": [{"role": "model", "content": "a"}, *filler], "model": "llama"}, False),
        ({"tools": [{"model": "nested"}], "model": "llama", "messages": filler}, True),
    ]
    for doc, early in cases:
        before = sample(app, "bbr_early_decisions_total")
        out = await _one(app, mode, chunks(doc))
        assert out.local_reply is None
        assert out.headers[MODEL_H] == "meta-llama/Llama-3.1-8B-Instruct"
        assert json.loads(out.body) == doc
        assert sample(app, "bbr_early_decisions_total") - before == (1 if early else 0), doc


# ------------------------------------------------------------------ concurrency, cancel
async def test_200_concurrent_streams_keep_their_own_models(bbr: tuple[BBRApp, LogSink]) -> None:
    app, _ = bbr
    target = f"127.0.0.1:{app.grpc_port}"
    clients = [EnvoyClient([m.filter(target)]) for m in ROUTABLE]

    async def one(i: int) -> None:
        model = ["llama", "critic", f"model-{i}", "ski-resorts"][i % 4]
        body = json.dumps({"model": model, "prompt": "p" * (i * 7)}).encode()
        async with clients[i % 3].exchange() as ex:
            out = await ex.process_request(HEADERS, [body[: i % len(body)], body[i % len(body) :]])
        expected = {"llama": "meta-llama/Llama-3.1-8B-Instruct", "critic": "movie-critique"}
        assert out.local_reply is None
        assert out.headers[MODEL_H] == expected.get(model, model)
        assert json.loads(out.body)["prompt"] == "p" * (i * 7)

    try:
        await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert sample(app, "bbr_requests_total", outcome="routed") == 200
    await wait_for(lambda: app.servicer.active_streams == 0)
    assert sample(app, "bbr_active_streams") == 0


def _raw_headers(mode: BodyMode) -> ext_proc.ProcessingRequest:
    req = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=envoy_base.HeaderMap(
                headers=[
                    envoy_base.HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS.items()
                ]
            )
        )
    )
    req.protocol_config.request_body_mode = int(mode)  # type: ignore[assignment]
    return req


def _raw_body(chunk: bytes, eos: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=chunk, end_of_stream=eos))


@pytest.mark.parametrize("routed_early", [False, True])
async def test_client_cancel_mid_stream_frees_everything(
    bbr: tuple[BBRApp, LogSink], routed_early: bool
) -> None:
    app, _ = bbr
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, BBRStream)]
    head = CHAT[:80] if routed_early else CHAT[:5]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        calls = []
        for _ in range(20):
            call = stub.Process()
            await call.write(_raw_headers(BodyMode.FULL_DUPLEX_STREAMED))
            await call.write(_raw_body(head + b" " * 100_000, False))
            calls.append(call)
        if routed_early:
            for call in calls:  # the headers response proves the stream got that far
                resp = await call.read()
                assert resp.WhichOneof("response") == "request_headers"
        await wait_for(lambda: app.servicer.active_streams == 20)
        for call in calls:
            call.cancel()
        await wait_for(lambda: app.servicer.active_streams == 0)
    assert sample(app, "bbr_requests_total", outcome="cancelled") == 20
    assert sample(app, "bbr_active_streams") == 0
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, BBRStream)]


# ------------------------------------------------------------------ health, metrics, trace
async def test_health_on_both_ports_and_metrics_over_http(make_app: Any) -> None:
    app, _ = await make_app(serve_metrics=True)
    await _one(app, ROUTABLE[0], [CHAT])
    for port in (app.health_port, app.grpc_port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in (
                "",
                "liveness",
                "readiness",
                "envoy.service.ext_proc.v3.ExternalProcessor",
            ):
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text
    assert 'bbr_requests_total{outcome="routed"} 1.0' in text
    assert "bbr_success_total 1.0" in text
    assert "bbr_parse_duration_seconds_count 1.0" in text
    assert f"bbr_request_body_bytes_sum {float(len(CHAT))}" in text
    assert 'bbr_model_config_entries{kind="aliases"} 3.0' in text


async def test_a_span_per_request_when_tracing_is_on(make_app: Any) -> None:
    from llmd_sdk.telemetry import setup_tracing
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = setup_tracing("llmd-bbr", exporter=exporter)
    app, _ = await make_app(tracing=True)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**HEADERS, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": "t1"}
    await _one(app, ROUTABLE[2], [CHAT[:70], CHAT[70:]], headers)
    await _one(app, ROUTABLE[0], [b"{bad"], headers)
    provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.name == "bbr.route"]
    assert len(spans) == 2
    ok, bad = spans
    assert f"{ok.context.trace_id:032x}" == trace_id
    assert ok.attributes["bbr.outcome"] == "routed"
    assert ok.attributes["gen_ai.request.model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert ok.attributes["ext_proc.request_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert bad.attributes["bbr.outcome"] == "invalid_json"
    assert not bad.status.is_ok


async def test_no_span_when_tracing_is_off(bbr: tuple[BBRApp, LogSink]) -> None:
    app, _ = bbr
    assert app.service.tracer is None
    out = await _one(app, ROUTABLE[0], [CHAT])
    assert out.headers[MODEL_H]


async def test_response_path_is_answered_if_envoy_sends_it(bbr: tuple[BBRApp, LogSink]) -> None:
    app, _ = bbr
    cfg = FilterConfig(
        name="bbr",
        target=f"127.0.0.1:{app.grpc_port}",
        request_body_mode=BodyMode.BUFFERED,
        response_body_mode=BodyMode.STREAMED,
    )

    async def sse() -> Any:
        yield b"data: [DONE]\n\n"

    async with EnvoyClient([cfg]) as client, client.exchange() as ex:
        await ex.process_request(HEADERS, [CHAT])
        rh = await ex.process_response_headers(200, {"content-type": "text/event-stream"}, False)
        assert rh.local_reply is None
        assert b"".join([c async for c in ex.process_response_body(sse())]) == b"data: [DONE]\n\n"


# ----------------------------------------------------------------------------- trailers
def _raw_stream_headers(mode: BodyMode, without_waiting: bool) -> ext_proc.ProcessingRequest:
    req = _raw_headers(mode)
    req.protocol_config.send_body_without_waiting_for_header_response = without_waiting
    return req


def _kinds(resps: list[ext_proc.ProcessingResponse]) -> list[str]:
    return [str(r.WhichOneof("response")) for r in resps]


@pytest.mark.parametrize(
    ("mode", "without_waiting", "model_first", "after_body", "after_trailers"),
    [
        # Routed at the trailers: the held headers answer, the body, then the trailers.
        (BodyMode.FULL_DUPLEX_STREAMED, False, False, [], ["request_headers", "request_body", "request_trailers"]),
        # Routed early: everything but the trailers answer came with the body.
        (BodyMode.FULL_DUPLEX_STREAMED, False, True, ["request_headers", "request_body"], ["request_trailers"]),
        (BodyMode.STREAMED, True, False, [], ["request_headers", "request_body", "request_trailers"]),
        (BodyMode.STREAMED, False, False, ["request_headers", "request_body"], ["request_trailers"]),
        (BodyMode.BUFFERED, False, False, ["request_headers", "request_body"], ["request_trailers"]),
    ],
)  # fmt: skip
async def test_request_trailers_end_the_body(
    bbr: tuple[BBRApp, LogSink],
    mode: BodyMode,
    without_waiting: bool,
    model_first: bool,
    after_body: list[str],
    after_trailers: list[str],
) -> None:
    """HTTP requests with trailers end their body without end_of_stream (Envoy's
    request_trailer_mode SEND, which FULL_DUPLEX_STREAMED wants): BBR must not wait for it."""
    app, _ = bbr
    doc = (
        {"model": "llama", "prompt": "x" * 50} if model_first else {"prompt": "x", "model": "llama"}
    )
    body = json.dumps(doc).encode()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(_raw_stream_headers(mode, without_waiting))
        got: list[ext_proc.ProcessingResponse] = []
        if mode in (BodyMode.BUFFERED, BodyMode.STREAMED) and not without_waiting:
            got.append(await call.read())  # Envoy waits for the headers answer first
        await call.write(_raw_body(body, False))
        while len(got) < len(after_body):
            got.append(await call.read())
        assert _kinds(got) == after_body
        await call.write(ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()))
        rest = [await call.read() for _ in after_trailers]
        assert _kinds(rest) == after_trailers
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
    answers = got + rest
    headers = next(r for r in answers if r.WhichOneof("response") == "request_headers")
    routed = {
        h.header.key: h.header.raw_value
        for h in headers.request_headers.response.header_mutation.set_headers
    }
    body_answers = [r for r in answers if r.WhichOneof("response") == "request_body"]
    if mode == BodyMode.BUFFERED:
        routed = {
            h.header.key: h.header.raw_value
            for h in body_answers[0].request_body.response.header_mutation.set_headers
        }
    if mode == BodyMode.STREAMED and not without_waiting:
        assert routed == {}
        assert sample(app, "bbr_requests_total", outcome="headers_dropped") == 1
    else:
        assert routed[MODEL_H] == b"meta-llama/Llama-3.1-8B-Instruct"
        assert sample(app, "bbr_requests_total", outcome="routed") == 1
    if mode == BodyMode.FULL_DUPLEX_STREAMED:
        streamed = [r.request_body.response.body_mutation.streamed_response for r in body_answers]
        assert b"".join(s.body for s in streamed) == body
        assert not any(s.end_of_stream for s in streamed)  # the trailers end the stream


@pytest.mark.parametrize("mode", ROUTABLE, ids=lambda m: m.name)
async def test_an_internal_failure_is_a_500_logged_and_counted(
    bbr: tuple[BBRApp, LogSink], mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, sink = bbr

    def broken(body: bytes, **kw: Any) -> Any:
        raise RuntimeError("planted fault")

    monkeypatch.setattr(app.router, "decide", broken)
    out = await _one(app, mode, [CHAT], {**HEADERS, "x-request-id": "boom-1"})
    assert out.local_reply is not None and out.local_reply.status == 500
    assert json.loads(out.local_reply.body)["error"]["type"] == "InternalServerError"
    (event,) = sink.events("internal error")
    assert event["request_id"] == "boom-1" and "planted fault" in event["error"]
    assert sample(app, "bbr_requests_total", outcome="error") == 1
    monkeypatch.undo()
    ok = await _one(app, mode, [CHAT])
    assert ok.local_reply is None
