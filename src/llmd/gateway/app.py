"""The dev gateway: the test harness's Envoy, not a product.

For each HTTP request it does what Envoy does in front of an InferencePool with the Gateway API
Inference Extension: run BBR over ext_proc, route on the model header BBR set to that model's
pool, run the pool's EPP over ext_proc, forward to the endpoint the EPP picked (falling back
along its list on connect failure), report the served endpoint on the response path, and stream
the response back through the EPP. It exists so that the whole stack runs, and is tested, on one
machine without Envoy; in a cluster Envoy (Istio, kgateway, GKE) takes its place.

Like Envoy's HTTP/1 codec, which pushes the body bytes of one socket read through the filter
chain as one piece, the gateway hands the EPP whatever part of the upstream body has arrived
when it reads (aiohttp's `iter_any`), not one message per chunked-encoding chunk: tokens that
arrive together cost one ext_proc message each way, as they do behind Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from llmd_sdk.extproc import EnvoyClient, Exchange, LocalReply
from llmd_sdk.openai import error_json
from llmd_sdk.telemetry import get_logger, get_tracer, inject_headers
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from yarl import URL

from llmd.gateway.config import GatewayConfig

DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SUBSET = "x-gateway-destination-endpoint-subset"
# A test and debugging aid: a request header the gateway turns into Envoy's subset-hint metadata.
SUBSET_HINT_HEADER = "x-llmd-subset-hint"

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

log = get_logger("llmd.gateway")

# Failures that happen before the upstream sent a response header: the request can go to the next
# endpoint without the client seeing anything (inference requests have no side effects to repeat).
# ClientOSError covers a refused connect (its subclass ClientConnectorError) and a reset.
_RETRYABLE = (
    aiohttp.ClientOSError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ConnectionTimeoutError,
)
KEEPALIVE_EXPIRY_S = 2.0


def _stale_connection(exc: BaseException) -> bool:
    """What a pooled keep-alive connection the server closed meanwhile also produces: worth one
    more try on the same endpoint, on a fresh connection, before moving on."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    )


def _json_reply(status: int, message: str, code: Any = None) -> Response:
    return Response(error_json(status, message, code=code), status, media_type="application/json")


def _local(reply: LocalReply) -> Response:
    headers = {k: v for k, v in reply.headers.items() if not k.startswith(":")}
    headers.pop("content-length", None)
    return Response(reply.body, reply.status, headers=headers)


def _downstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if not k.startswith(":") and k not in _HOP_BY_HOP}


class Gateway:
    """Owns the ext_proc clients and the upstream HTTP client; `app` is the ASGI app."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.bbr = EnvoyClient([config.bbr.filter("bbr")]) if config.bbr else None
        self.epps = {p.name: EnvoyClient([p.epp.filter(f"epp/{p.name}")]) for p in config.pools}
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=2048,
                # Idle connections close here before the engine's server closes them (uvicorn,
                # as vLLM runs it, drops them after 5 s): reusing one the server is closing
                # fails the request with no response.
                keepalive_timeout=KEEPALIVE_EXPIRY_S,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=config.upstream_connect_timeout_s,
                sock_read=config.upstream_read_timeout_s,
            ),
            # A proxy passes the body as the upstream encoded it and asks for no encoding the
            # client did not ask for.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )
        self.tracer = get_tracer("llmd.gateway")
        self.app = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "DELETE"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    async def _healthz(self, request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    async def aclose(self) -> None:
        await self.http.close()
        for client in [*self.epps.values(), *([self.bbr] if self.bbr else [])]:
            await client.close()

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        if len(body) > self.config.max_request_body_bytes:
            return _json_reply(413, "request body too large")
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers: dict[str, str] = {
            ":method": request.method,
            ":path": path,
            ":authority": request.headers.get("host", "gateway"),
            ":scheme": "http",
            **{k.lower(): v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP},
        }
        headers.setdefault("x-request-id", str(uuid.uuid4()))
        chunks = [body] if body else []
        exchanges: list[Exchange] = []
        with self.tracer.start_as_current_span(
            "gateway " + request.method + " " + request.url.path
        ):
            inject_headers(headers)
            try:
                response = await self._route(request, headers, chunks, exchanges, started)
            except BaseException:
                await asyncio.gather(*(ex.close(cancel=True) for ex in exchanges))
                raise
        return response

    async def _route(
        self,
        request: Request,
        headers: dict[str, str],
        chunks: list[bytes],
        exchanges: list[Exchange],
        started: float,
    ) -> Response:
        cfg = self.config
        if self.bbr is not None:
            bbr_ex = self.bbr.exchange()
            exchanges.append(bbr_ex)
            out = await bbr_ex.process_request(headers, chunks)
            if out.local_reply is not None:
                await bbr_ex.close()
                return _local(out.local_reply)
            headers, chunks = out.headers, ([out.body] if out.body else [])
        model = headers.get(cfg.model_header)
        pool = cfg.route(model)
        if pool is None:
            await asyncio.gather(*(ex.close() for ex in exchanges))
            if model is None:
                return _json_reply(404, f"no route for {request.url.path}")
            return _json_reply(404, f"The model `{model}` does not exist.")
        epp_ex = self.epps[pool.name].exchange()
        exchanges.append(epp_ex)
        metadata = None
        hint = headers.pop(SUBSET_HINT_HEADER, None)
        if hint is not None:
            subset = [e.strip() for e in hint.split(",") if e.strip()]
            metadata = {"envoy.lb.subset_hint": {SUBSET: subset}}
        picked = await epp_ex.process_request(headers, chunks, metadata=metadata)
        if picked.local_reply is not None:
            await asyncio.gather(*(ex.close() for ex in exchanges))
            return _local(picked.local_reply)
        destination = picked.headers.get(DESTINATION) or str(
            picked.dynamic_metadata.get("envoy.lb", {}).get(DESTINATION, "")
        )
        candidates = [e.strip() for e in destination.split(",") if e.strip()]
        if not candidates:
            await asyncio.gather(*(ex.close() for ex in exchanges))
            return _json_reply(503, f"the endpoint picker of pool {pool.name} picked no endpoint")
        upstream, served = await self._connect(
            request.method, picked.headers, picked.body, candidates
        )
        if upstream is None:
            await asyncio.gather(*(ex.close() for ex in exchanges))
            return _json_reply(503, f"upstream connect error: none of {destination} answered")
        served_md = {"envoy.lb": {SERVED: served}}
        resp_headers = dict(upstream.headers)
        for ex in reversed(exchanges):
            rh = await ex.process_response_headers(
                upstream.status, resp_headers, end_of_stream=False, metadata=served_md
            )
            if rh.local_reply is not None:
                upstream.close()
                await asyncio.gather(*(e.close() for e in exchanges))
                return _local(rh.local_reply)
            resp_headers = rh.headers
        status = int(resp_headers.get(":status", upstream.status))
        log.debug(
            "routed",
            model=model,
            pool=pool.name,
            endpoint=served,
            status=status,
            pick_ms=round((time.perf_counter() - started) * 1e3, 3),
        )
        return StreamingResponse(
            self._stream_back(upstream, exchanges),
            status_code=status,
            headers=_downstream_headers(resp_headers),
        )

    async def _connect(
        self, method: str, headers: Mapping[str, str], body: bytes, candidates: list[str]
    ) -> tuple[aiohttp.ClientResponse | None, str]:
        """Send to the first candidate that answers with response headers.

        A candidate that refuses the connection or resets it before any response header (a
        replica killed mid-request) costs nothing yet: the next one in the EPP's fallback list
        gets the request, as Envoy does with ``retry_on: connect-failure,reset``. A reset or an
        early close, which a stale keep-alive connection also produces, is first retried once on
        the same endpoint (the pool drops a connection that failed, so the retry opens a new one).
        """
        path = headers.get(":path", "/")
        fwd = _downstream_headers(headers)
        for endpoint in candidates:
            for attempt in (1, 2):
                try:
                    response = await self.http.request(
                        method,
                        # encoded: the path and query go upstream as the client sent them
                        URL(f"http://{endpoint}{path}", encoded=True),
                        headers=fwd,
                        data=body or None,
                    )
                    return response, endpoint
                except _RETRYABLE as exc:
                    log.warning(
                        "upstream failed before responding",
                        endpoint=endpoint,
                        attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    if attempt == 2 or not _stale_connection(exc):
                        break
        return None, ""

    async def _stream_back(
        self, upstream: aiohttp.ClientResponse, exchanges: list[Exchange]
    ) -> AsyncIterator[bytes]:
        cancelled = True
        try:
            # Whatever has arrived since the last read, as one piece (see the module docstring).
            body: AsyncIterator[bytes] = upstream.content.iter_any()
            length = upstream.headers.get("content-length")
            content_length = int(length) if length is not None and length.isdigit() else None
            for ex in reversed(exchanges):
                body = ex.process_response_body(body, content_length)
                content_length = None  # a filter may have changed the body
            async for chunk in body:
                yield chunk
            cancelled = False
        finally:
            # A whole body leaves the connection reusable; a cut one must not go back to the pool.
            if cancelled:
                upstream.close()
            else:
                upstream.release()
            await asyncio.gather(*(ex.close(cancel=cancelled) for ex in exchanges))
