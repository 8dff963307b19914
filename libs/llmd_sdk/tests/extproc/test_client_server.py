"""The SDK's processor base and its Envoy-semantics client, tested against each other."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from llmd_sdk.extproc import BodyMode, EnvoyClient, FilterConfig

BODY = json.dumps({"model": "llama", "messages": [{"role": "user", "content": "héllo ✓"}]}).encode()
HEADERS = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}

# (mode, send_body_without_waiting): the combinations in which a body-derived header reaches
# the upstream request under Envoy's semantics.
ROUTABLE = [
    (BodyMode.BUFFERED, False),
    (BodyMode.STREAMED, True),
    (BodyMode.FULL_DUPLEX_STREAMED, False),
]


def _filter(
    target: str, mode: BodyMode, without_waiting: bool = False, **kw: object
) -> FilterConfig:
    return FilterConfig(
        name="router",
        target=target,
        request_body_mode=mode,
        send_body_without_waiting_for_header_response=without_waiting,
        **kw,  # type: ignore[arg-type]
    )


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


@pytest.mark.parametrize(("mode", "without_waiting"), ROUTABLE)
async def test_body_derived_header_reaches_the_request_at_every_split(
    model_router: tuple[str, list[bool], list[bytes]],
    chunked: Callable[[bytes, int], list[bytes]],
    mode: BodyMode,
    without_waiting: bool,
) -> None:
    target, _, _ = model_router
    async with EnvoyClient([_filter(target, mode, without_waiting)]) as client:
        for at in range(len(BODY) + 1):
            async with client.exchange() as ex:
                out = await ex.process_request(HEADERS, chunked(BODY, at))
            assert out.local_reply is None, out.local_reply
            assert out.headers["x-gateway-model-name"] == "llama"
            assert out.route_cache_cleared
            assert out.body == BODY, f"body changed at split {at}"
            assert (
                out.dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"]
                == "10.0.0.1:8000"
            )


async def test_streamed_mode_drops_body_derived_headers_like_envoy(
    model_router: tuple[str, list[bool], list[bytes]],
) -> None:
    target, _, _ = model_router
    async with EnvoyClient([_filter(target, BodyMode.STREAMED)]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(HEADERS, [BODY[:10], BODY[10:]])
    assert out.local_reply is None
    assert "x-gateway-model-name" not in out.headers
    assert not out.route_cache_cleared
    assert out.body == BODY


@pytest.mark.parametrize(("mode", "without_waiting"), ROUTABLE)
async def test_body_rewrite_is_delivered_in_every_mode(
    model_router: tuple[str, list[bool], list[bytes]], mode: BodyMode, without_waiting: bool
) -> None:
    target, _, _ = model_router
    body = json.dumps({"model": "alias", "prompt": "x" * 200_000}).encode()
    headers = {**HEADERS, "content-length": str(len(body))}
    parts = [body[i : i + 16_384] for i in range(0, len(body), 16_384)]
    async with EnvoyClient([_filter(target, mode, without_waiting)]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(headers, parts)
    assert out.local_reply is None
    assert json.loads(out.body) == {"model": "target", "prompt": "x" * 200_000}
    assert out.headers["x-gateway-model-name"] == "target"
    if mode == BodyMode.BUFFERED:
        assert out.headers["content-length"] == str(len(out.body))


@pytest.mark.parametrize(("mode", "without_waiting"), ROUTABLE)
async def test_bad_json_is_an_openai_400(
    model_router: tuple[str, list[bool], list[bytes]], mode: BodyMode, without_waiting: bool
) -> None:
    target, _, _ = model_router
    async with EnvoyClient([_filter(target, mode, without_waiting)]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(HEADERS, [b"{not json"])
    assert out.local_reply is not None
    assert out.local_reply.status == 400
    assert json.loads(out.local_reply.body)["error"]["message"] == "body is not JSON"
    assert out.local_reply.headers["content-type"] == "application/json"


async def test_a_failing_hook_is_a_500_and_the_server_keeps_serving(
    model_router: tuple[str, list[bool], list[bytes]],
) -> None:
    target, _, _ = model_router
    async with EnvoyClient([_filter(target, BodyMode.BUFFERED)]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(HEADERS, [b'{"model": "boom"}'])
        assert out.local_reply is not None and out.local_reply.status == 500
        assert "internal error" in json.loads(out.local_reply.body)["error"]["message"]
        async with client.exchange() as ex:
            ok = await ex.process_request(HEADERS, [BODY])
        assert ok.headers["x-gateway-model-name"] == "llama"


async def test_request_without_body_passes_untouched(
    model_router: tuple[str, list[bool], list[bytes]],
) -> None:
    target, _, _ = model_router
    get = {":method": "GET", ":path": "/v1/models"}
    for mode in BodyMode:
        if mode == BodyMode.BUFFERED_PARTIAL:
            continue
        async with EnvoyClient([_filter(target, mode)]) as client, client.exchange() as ex:
            out = await ex.process_request(get, [])
        assert out.local_reply is None
        assert out.headers == get
        assert out.body == b""


@pytest.mark.parametrize(
    "mode", [BodyMode.STREAMED, BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED]
)
async def test_response_path_sees_served_endpoint_and_streams_the_body(
    model_router: tuple[str, list[bool], list[bytes]], mode: BodyMode
) -> None:
    target, closed, seen = model_router
    cfg = _filter(target, BodyMode.BUFFERED, response_body_mode=mode)
    sse = [b'data: {"a": 1}\n\n', b'data: {"a": 2}\n\n', b"data: [DONE]\n\n"]
    async with EnvoyClient([cfg]) as client, client.exchange() as ex:
        await ex.process_request(HEADERS, [BODY])
        rh = await ex.process_response_headers(
            200,
            {"content-type": "text/event-stream"},
            end_of_stream=False,
            metadata={"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.1:8000"}},
        )
        assert rh.local_reply is None
        assert rh.headers["x-served-by"] == "10.0.0.1:8000"
        got = [c async for c in ex.process_response_body(_chunks(sse))]
    assert b"".join(got) == b"".join(sse)
    if mode != BodyMode.BUFFERED:
        assert b"".join(seen) == b"".join(sse)
    await _wait_for(lambda: closed == [True])


async def test_cancelled_exchange_releases_the_stream(
    model_router: tuple[str, list[bool], list[bytes]],
) -> None:
    target, closed, _ = model_router
    async with EnvoyClient([_filter(target, BodyMode.FULL_DUPLEX_STREAMED)]) as client:
        ex = client.exchange()
        await ex.process_request(HEADERS, [BODY])
        await ex.close(cancel=True)
    await _wait_for(lambda: closed == [False])


async def test_server_side_body_limit_is_a_413(
    model_router: tuple[str, list[bool], list[bytes]],
) -> None:
    target, _, _ = model_router
    huge = b'{"model": "x", "p": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    cfg = _filter(target, BodyMode.FULL_DUPLEX_STREAMED)
    async with EnvoyClient([cfg]) as client:
        async with client.exchange() as ex:
            out = await ex.process_request(
                HEADERS, [huge[i : i + 65536] for i in range(0, len(huge), 65536)]
            )
    assert out.local_reply is not None and out.local_reply.status == 413


async def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)
