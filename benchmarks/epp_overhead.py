"""EPP decision overhead through the real ext_proc path, against a bare grpc.aio echo.

For 8, 64 and 256 endpoints an `llmd-epp` process (static endpoints, queue + KV-cache + prefix
scorers, metrics frozen so only the decision path runs) and a bare grpc.aio echo servicer are
driven the way Envoy drives an EPP in FULL_DUPLEX_STREAMED mode: request headers, the chat body,
then the headers response carrying `x-gateway-destination-endpoint` (the decision) and the
streamed body. Reported per subject:

- decisions/s: closed loop at `--concurrency` streams;
- p50/p99 decision latency: open loop at `--rate` requests/s (time from the first message to
  the headers response), which is what a gateway adds to each request.

Echo and EPP rounds alternate and medians of rounds are reported, so machine noise hits both.
Horizontal mode (`--replicas K`): K EPP processes with the precise prefix scorer sharing one
KVIndex (kvmanager at `--kvmanager`, else a stub index process), driven together; aggregate
decisions/s against one replica with the same configuration.

    uv run --no-sync python benchmarks/epp_overhead.py [--smoke] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _harness import free_port, machine, percentile, spawn, stop, table, wait_for_port, write_json
from google.protobuf import struct_pb2
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc, kvindex, kvindex_grpc

FULL_DUPLEX = 4  # ProcessingMode.FULL_DUPLEX_STREAMED
SYSTEM = "You are a helpful assistant for the llmd project. Answer precisely. " * 20

EPP_CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
dataLayer: {injectDefaults: false}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
"""

PRECISE_CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: precise-prefix-cache-scorer
  parameters: {timeout: 1s}
dataLayer: {injectDefaults: false}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: precise-prefix-cache-scorer, weight: 3}
"""


# ------------------------------------------------------------------------------------ servers
class EchoServicer(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The least an EPP can do in full-duplex mode: answer the body with a fixed destination
    (header and envoy.lb metadata) and stream the body back."""

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_body" and req.request_body.end_of_stream:
                hr = ext_proc.ProcessingResponse(
                    request_headers=ext_proc.HeadersResponse(response=ext_proc.CommonResponse())
                )
                opt = hr.request_headers.response.header_mutation.set_headers.add()
                opt.header.key = "x-gateway-destination-endpoint"
                opt.header.raw_value = b"10.0.0.1:8000"
                md = struct_pb2.Struct()
                md.update({"envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000"}})
                hr.dynamic_metadata.CopyFrom(md)
                yield hr
                body = ext_proc.ProcessingResponse(
                    request_body=ext_proc.BodyResponse(response=ext_proc.CommonResponse())
                )
                sr = body.request_body.response.body_mutation.streamed_response
                sr.body = req.request_body.body
                sr.end_of_stream = True
                yield body
            elif kind == "response_headers":
                yield ext_proc.ProcessingResponse(
                    response_headers=ext_proc.HeadersResponse(response=ext_proc.CommonResponse())
                )


class StubIndex(kvindex_grpc.KVIndexServicer):  # type: ignore[misc]
    """A KVIndex that knows nothing: the cost of asking, without the index's own work."""

    async def Score(self, request: Any, context: Any) -> Any:
        return kvindex.ScoreResponse(
            scores=[kvindex.EndpointScore(endpoint=e) for e in request.candidate_endpoints],
            total_blocks=1,
            block_size=16,
        )


async def serve(kind: str, port: int) -> None:
    server = grpc.aio.server()
    if kind == "echo":
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(EchoServicer(), server)
    else:
        kvindex_grpc.add_KVIndexServicer_to_server(StubIndex(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def start_epp(endpoints: int, config: str, extra: list[str] | None = None) -> tuple[Any, int]:
    port, health, metrics = free_port(), free_port(), free_port()
    eps = ",".join(f"10.{i // 250}.{i % 250}.1:8000" for i in range(endpoints))
    args = ["-m", "llmd_epp", "--host", "127.0.0.1", "--grpc-port", str(port),
            "--grpc-health-port", str(health), "--metrics-port", str(metrics),
            "--endpoints", eps, "--config-text", config, "--log-level", "WARNING",
            "--seed", "1", *(extra or [])]  # fmt: skip
    proc = spawn(args)
    wait_for_port(port, proc=proc)
    return proc, port


# ------------------------------------------------------------------------------------- client
def messages(i: int) -> tuple[Any, Any]:
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
                        "x-request-id": f"bench-{i}",
                    }.items()
                ]
            )
        )
    )
    headers.protocol_config.request_body_mode = FULL_DUPLEX  # type: ignore[assignment]
    headers.protocol_config.response_body_mode = FULL_DUPLEX  # type: ignore[assignment]
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"question number {i}: what is {i} squared?"},
            ],
            "max_tokens": 16,
        }
    ).encode()
    return headers, ext_proc.ProcessingRequest(
        request_body=ext_proc.HttpBody(body=body, end_of_stream=True)
    )


class Client:
    def __init__(self, ports: list[int]) -> None:
        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
        self.stubs = [ext_proc_grpc.ExternalProcessorStub(c) for c in self.channels]
        self.n = 0
        self.failures = 0
        self.errors: dict[str, int] = {}

    async def close(self) -> None:
        for c in self.channels:
            await c.close()

    async def one(self) -> float:
        """One decision; returns the seconds until the headers response."""
        i = self.n
        self.n += 1
        headers, body = messages(i)
        stub = self.stubs[i % len(self.stubs)]
        t0 = time.perf_counter()
        call = stub.Process()
        try:
            await call.write(headers)
            await call.write(body)
            first = await call.read()
            took = time.perf_counter() - t0
            if first is grpc.aio.EOF or not first.HasField("request_headers"):
                self.failures += 1
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            self.failures += 1
            self.errors[type(exc).__name__ + ": " + str(getattr(exc, "details", lambda: "")())] = 1
            return time.perf_counter() - t0
        return took


async def closed_loop(ports: list[int], total: int, concurrency: int) -> dict[str, float]:
    client = Client(ports)
    try:
        for _ in range(min(50, total)):
            await client.one()
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.one()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    return {"decisions_per_s": total / wall, "failures": client.failures}


async def open_loop(ports: list[int], rate: float, total: int) -> dict[str, float]:
    client = Client(ports)
    latencies: list[float] = []
    try:
        for _ in range(min(50, total)):
            await client.one()
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []

        async def timed() -> None:
            latencies.append(await client.one())

        for k in range(total):
            due = start + k / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed()))
        await asyncio.gather(*tasks)
        achieved = total / (loop.time() - start)
    finally:
        await client.close()
    return {
        "offered_rps": rate,
        "achieved_rps": achieved,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "failures": client.failures,
    }


def core_cost(n: int, decisions: int) -> dict[str, float]:
    """The scheduling core alone (no gRPC, no parsing): schedule + pre_request per decision,
    as a simulator would call it."""
    from llmd_epp.pickerconfig import load_picker_config
    from llmd_epp.scheduling import Endpoint, EndpointMetrics, LLMRequest

    cfg = load_picker_config(EPP_CONFIG, seed=1)
    eps = [
        Endpoint.at(f"10.{i // 250}.{i % 250}.1:8000", metrics=EndpointMetrics(waiting=i % 7))
        for i in range(n)
    ]
    reqs = [
        LLMRequest(request_id=str(i), model="m", target_model="m", prompt=SYSTEM + f"q{i}")
        for i in range(decisions)
    ]
    sched = cfg.scheduler
    samples = []
    for i, req in enumerate(reqs):
        t0 = time.perf_counter()
        result = sched.schedule(req, eps, float(i))
        sched.pre_request(req, result, float(i))
        samples.append(time.perf_counter() - t0)
    samples = samples[len(samples) // 10 :]  # warm-up
    return {
        "mean_us": statistics.fmean(samples) * 1e6,
        "p50_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
    }


def measure(ports: list[int], args: argparse.Namespace) -> dict[str, float]:
    closed = asyncio.run(closed_loop(ports, args.requests, args.concurrency))
    opened = asyncio.run(open_loop(ports, args.rate, args.latency_requests))
    return {**closed, **opened}


def med(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


# --------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=["echo", "kvstub"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--endpoints", default="8,64,256", help="comma-separated pool sizes")
    ap.add_argument("--requests", type=int, default=3000, help="closed-loop decisions per round")
    ap.add_argument("--latency-requests", type=int, default=3000, help="open-loop requests")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=0, help="horizontal mode: EPP processes")
    ap.add_argument("--kvmanager", default="", help="KVIndex address for horizontal mode")
    ap.add_argument("--smoke", action="store_true", help="seconds, for CI")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port))
        return 0
    sizes = [int(s) for s in args.endpoints.split(",") if s]
    if args.smoke:
        sizes, args.rounds = [8], 1
        args.requests = args.latency_requests = 200
        args.rate = 200.0
        args.replicas = args.replicas and 2

    procs: list[Any] = []
    results: dict[str, Any] = {}
    try:
        echo_port = free_port()
        procs.append(spawn([__file__, "--serve", "echo", "--port", str(echo_port)]))
        wait_for_port(echo_port, proc=procs[-1])
        epp_ports = {}
        for n in sizes:
            proc, port = start_epp(n, EPP_CONFIG)
            procs.append(proc)
            epp_ports[n] = port
        rounds: dict[str, list[dict[str, float]]] = {"echo": []}
        rounds.update({f"epp-{n}": [] for n in sizes})
        for _ in range(args.rounds):
            rounds["echo"].append(measure([echo_port], args))
            for n in sizes:
                rounds[f"epp-{n}"].append(measure([epp_ports[n]], args))
        results["rounds"] = rounds
        results["core"] = {str(n): core_cost(n, args.requests) for n in sizes}
        if args.replicas:
            results["horizontal"] = horizontal(args, procs)
    finally:
        for p in procs:
            stop(p)

    echo = rounds["echo"]
    rows = [
        {
            "subject": "bare grpc.aio echo",
            "endpoints": "-",
            "decisions/s": med(echo, "decisions_per_s"),
            "p50 ms": med(echo, "p50_ms"),
            "p99 ms": med(echo, "p99_ms"),
            "achieved rps": med(echo, "achieved_rps"),
            "cost vs echo": 1.0,
        }
    ]
    summary: dict[str, Any] = {}
    for n in sizes:
        r = rounds[f"epp-{n}"]
        cost = med(echo, "decisions_per_s") / med(r, "decisions_per_s")
        rows.append(
            {
                "subject": "llmd-epp",
                "endpoints": n,
                "decisions/s": med(r, "decisions_per_s"),
                "p50 ms": med(r, "p50_ms"),
                "p99 ms": med(r, "p99_ms"),
                "achieved rps": med(r, "achieved_rps"),
                "cost vs echo": cost,
            }
        )
        summary[str(n)] = {
            "decisions_per_s": med(r, "decisions_per_s"),
            "p50_ms": med(r, "p50_ms"),
            "p99_ms": med(r, "p99_ms"),
            "achieved_rps": med(r, "achieved_rps"),
            "cost_ratio_vs_echo": cost,
            "p50_ratio_vs_echo": med(r, "p50_ms") / med(echo, "p50_ms"),
            "failures": sum(x["failures"] for x in r),
        }
    cols = ["subject", "endpoints", "decisions/s", "p50 ms", "p99 ms", "achieved rps",
            "cost vs echo"]  # fmt: skip
    print(table(rows, cols))
    print(
        f"\nopen loop at {args.rate:.0f} req/s offered ({args.latency_requests} requests), closed "
        f"loop {args.requests} decisions at concurrency {args.concurrency}; medians of "
        f"{args.rounds} alternating rounds. Target: p99 < 2 ms at 64 endpoints, 1,000 req/s."
    )
    core_rows = [
        {"endpoints": n, **{k: v for k, v in results["core"][str(n)].items()}} for n in sizes
    ]
    print("\nscheduling core alone (schedule + pre_request, no I/O):")
    print(table(core_rows, ["endpoints", "mean_us", "p50_us", "p99_us"]))
    if "horizontal" in results:
        h = results["horizontal"]
        print(
            f"\nhorizontal: {h['replicas']} replicas {h['aggregate_decisions_per_s']:,.0f} "
            f"decisions/s vs 1 replica {h['single_decisions_per_s']:,.0f} "
            f"(x{h['scale']:.2f}; precise prefix scorer, index: {h['index']})"
        )
    write_json(
        args.out,
        {
            "benchmark": "epp_overhead",
            "config": {k: v for k, v in vars(args).items() if k not in ("serve", "port", "out")},
            "echo": {k: med(echo, k) for k in ("decisions_per_s", "p50_ms", "p99_ms")},
            "epp": summary,
            **results,
            "target": {"endpoints": 64, "rate": 1000, "p99_ms": 2.0},
            "machine": machine(),
        },
    )
    return 0


def horizontal(args: argparse.Namespace, procs: list[Any]) -> dict[str, Any]:
    index = args.kvmanager
    if not index:
        kv_port = free_port()
        procs.append(spawn([__file__, "--serve", "kvstub", "--port", str(kv_port)]))
        wait_for_port(kv_port, proc=procs[-1])
        index = f"127.0.0.1:{kv_port}"
    ports = []
    for _ in range(args.replicas):
        proc, port = start_epp(64, PRECISE_CONFIG, ["--kvmanager-address", index])
        procs.append(proc)
        ports.append(port)
    conc = args.concurrency * args.replicas
    single = asyncio.run(closed_loop(ports[:1], args.requests, args.concurrency))
    together = asyncio.run(closed_loop(ports, args.requests * args.replicas, conc))
    return {
        "replicas": args.replicas,
        "index": "kvmanager " + index if args.kvmanager else "stub",
        "single_decisions_per_s": single["decisions_per_s"],
        "aggregate_decisions_per_s": together["decisions_per_s"],
        "scale": together["decisions_per_s"] / single["decisions_per_s"],
        "failures": single["failures"] + together["failures"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
