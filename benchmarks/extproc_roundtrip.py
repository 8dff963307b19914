"""ext_proc round trip: the SDK's processor base against a bare grpc.aio echo servicer.

Each exchange is what Envoy does for a BUFFERED request: open a stream, send the request headers,
read the answer, send the whole body, read the answer, close. The bare echo answers each message
with an empty CONTINUE; the SDK subject is an `ExtProcStream` with the default hooks, which gives
the same answers through the base's dispatch. Servers run in their own processes; the client
drives a fixed number of concurrent streams; echo and SDK rounds alternate and the medians of
the rounds are reported, so machine noise hits both alike.

    uv run --no-sync python benchmarks/extproc_roundtrip.py [--smoke] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _harness import free_port, machine, spawn, stop, summarize, table, wait_for_port, write_json
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc

BODY_BYTES = 4096


class EchoServicer(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The least a processor can do: CONTINUE on every message."""

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield ext_proc.ProcessingResponse(
                    request_headers=ext_proc.HeadersResponse(response=ext_proc.CommonResponse())
                )
            elif kind == "request_body":
                yield ext_proc.ProcessingResponse(
                    request_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
                )


async def serve(kind: str, port: int) -> None:
    from llmd_sdk.extproc import (
        ExtProcStream,
        GrpcServer,
        StreamContext,
        ext_proc_registrar,
        wait_for_signal,
    )

    if kind == "echo":

        def register(server: grpc.aio.Server) -> None:
            ext_proc_grpc.add_ExternalProcessorServicer_to_server(EchoServicer(), server)

        registrars = [register]
    else:

        def factory(ctx: StreamContext) -> ExtProcStream:
            return ExtProcStream(ctx)

        registrars = [ext_proc_registrar(factory)[1]]
    server = GrpcServer(f"127.0.0.1:{port}", registrars)
    await server.start()
    await wait_for_signal()
    await server.stop(1)


def _messages() -> tuple[ext_proc.ProcessingRequest, ext_proc.ProcessingRequest]:
    headers = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=envoy_base.HeaderMap(
                headers=[
                    envoy_base.HeaderValue(key=k, raw_value=v.encode())
                    for k, v in {
                        ":method": "POST",
                        ":path": "/v1/chat/completions",
                        ":authority": "gateway",
                        "content-type": "application/json",
                        "x-request-id": "b1946ac9-2d3f-4c2f-9e1c-6c1c1f9a3e7b",
                    }.items()
                ]
            )
        )
    )
    headers.protocol_config.request_body_mode = 2  # BUFFERED
    body = ext_proc.ProcessingRequest(
        request_body=ext_proc.HttpBody(body=b"x" * BODY_BYTES, end_of_stream=True)
    )
    return headers, body


async def drive(port: int, total: int, concurrency: int) -> dict[str, float]:
    headers, body = _messages()
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)

        async def one() -> None:
            t0 = time.perf_counter()
            call = stub.Process()
            await call.write(headers)
            await call.read()
            await call.write(body)
            await call.read()
            await call.done_writing()
            await call.read()  # EOF
            latencies.append(time.perf_counter() - t0)

        for _ in range(min(50, total)):  # warm-up: channel, server code paths
            await one()
        latencies.clear()
        remaining = total
        sem = asyncio.Semaphore(concurrency)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with sem:
                    await one()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarize(latencies, wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=["echo", "sdk"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=4000, help="exchanges per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per subject")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="a few hundred exchanges, for CI")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port))
        return 0
    if args.smoke:
        args.requests, args.rounds = 200, 1

    procs = {}
    ports = {}
    try:
        for kind in ("echo", "sdk"):
            ports[kind] = free_port()
            procs[kind] = spawn([__file__, "--serve", kind, "--port", str(ports[kind])])
        for kind in ("echo", "sdk"):
            wait_for_port(ports[kind], proc=procs[kind])
        rounds: dict[str, list[dict[str, float]]] = {"echo": [], "sdk": []}
        for _ in range(args.rounds):
            for kind in ("echo", "sdk"):
                rounds[kind].append(
                    asyncio.run(drive(ports[kind], args.requests, args.concurrency))
                )
    finally:
        for p in procs.values():
            stop(p)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[kind])

    rows = []
    for kind, label in (("echo", "bare grpc.aio echo"), ("sdk", "SDK ExtProcStream")):
        rows.append(
            {
                "subject": label,
                "req/s": med(kind, "rps"),
                "p50 ms": med(kind, "p50_ms"),
                "p99 ms": med(kind, "p99_ms"),
            }
        )
    cost_ratio = med("echo", "rps") / med("sdk", "rps")
    p50_ratio = med("sdk", "p50_ms") / med("echo", "p50_ms")
    print(table(rows, ["subject", "req/s", "p50 ms", "p99 ms"]))
    print(
        f"\nper-request cost, SDK / echo: {cost_ratio:.3f}  (target <= 1.15)\n"
        f"p50 latency, SDK / echo:      {p50_ratio:.3f}\n"
        f"{args.rounds} alternating rounds x {args.requests} exchanges, concurrency "
        f"{args.concurrency}, {BODY_BYTES} B body; medians of rounds"
    )
    write_json(
        args.out,
        {
            "benchmark": "extproc_roundtrip",
            "config": {k: v for k, v in vars(args).items() if k not in ("serve", "port", "out")},
            "rounds": rounds,
            "median": {k: {m: med(k, m) for m in ("rps", "p50_ms", "p99_ms")} for k in rounds},
            "cost_ratio_sdk_over_echo": cost_ratio,
            "p50_ratio_sdk_over_echo": p50_ratio,
            "target_cost_ratio": 1.15,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
