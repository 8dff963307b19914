"""The round-robin baseline: a plain HTTP proxy that sends request i to endpoint i mod N.

What a Kubernetes Service in front of the engines does (kube-proxy spreads connections without
looking at them); streaming responses pass through untouched.

    python -m llmd.bench.rrproxy --port 8100 --endpoints 127.0.0.1:8200,127.0.0.1:8201
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}
)


def create_app(endpoints: Sequence[str]) -> Starlette:
    cycle = itertools.cycle(list(endpoints))
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(600.0, connect=5.0),
        limits=httpx.Limits(max_connections=4096, max_keepalive_connections=1024),
    )

    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    async def proxy(request: Request) -> Response:
        target = next(cycle)
        url = f"http://{target}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        req = client.build_request(
            request.method, url, headers=headers, content=await request.body()
        )
        try:
            upstream = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            return Response(f"upstream {target}: {exc}".encode(), 502)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(body(), upstream.status_code, headers=out_headers)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


async def _serve(host: str, port: int, endpoints: list[str]) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(endpoints),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
        )
    )
    await server.serve()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmd.bench.rrproxy", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--endpoints", required=True, help="ip:port,ip:port,...")
    args = ap.parse_args(argv)
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if not endpoints:
        ap.error("--endpoints: at least one ip:port")
    asyncio.run(_serve(args.host, args.port, endpoints))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
