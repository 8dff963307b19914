"""BBR throughput: `llmd-bbr` against a bare grpc.aio ext_proc echo, in the same run.

Each exchange is what Envoy does for one chat completion request: open a stream, send the
request headers, send the body (BUFFERED: one message; FULL_DUPLEX_STREAMED: 16 KiB chunks),
read the answers, close. Bodies are OpenAI chat requests of about 4 KiB and 64 KiB with
`messages` before `model` (as the OpenAI SDK writes them). The baseline is the foundation
benchmark's bare servicer (`extproc_roundtrip.EchoServicer`: CONTINUE on every message) for
BUFFERED, and its full-duplex twin (streams every chunk straight back) for FULL_DUPLEX_STREAMED:
the least any processor can do. The SDK's `ExtProcStream` with no-op hooks runs beside them, to
show what the processor base costs and what BBR's own work costs.

Reported per case: requests/s, p50/p99 latency seen by the client, and the server's CPU time per
request (utime+stime of the server process tree from /proc). The per-request cost ratio is
BBR's CPU per request over the echo's; client-side throughput ratios are printed beside it
(they also carry the client's own cost, which on a small machine competes with the server).
Subjects alternate round by round and medians are reported, so machine noise hits both alike.
`--max-workers N` then measures `llmd-bbr --workers n` for n = 1..N, driven by n client
processes, and reports the speed-up over n = 1.

    uv run --no-sync python benchmarks/bbr_throughput.py [--smoke] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _harness import (
    free_ports,
    machine,
    percentile,
    spawn,
    stop,
    table,
    wait_for_port,
    write_json,
)
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "bbr" / "models.yaml"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIZES = {"4KiB": 4 * 1024, "64KiB": 64 * 1024}
MODES = {"buffered": 2, "full-duplex": 4}  # ProcessingMode.BodySendMode values
CHUNK = 16 * 1024  # what Envoy typically hands on per read in streamed modes
# Generous: on a small shared machine a `--workers N` server can take tens of seconds to listen.
START_TIMEOUT_S = 120.0
TARGET_COST_RATIO = 1.3


# ------------------------------------------------------------------------------ servers
class FullDuplexEcho(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """The least a FULL_DUPLEX_STREAMED processor can do: CONTINUE the headers, stream each body
    chunk straight back."""

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
                cr = ext_proc.CommonResponse()
                cr.body_mutation.streamed_response.body = req.request_body.body
                cr.body_mutation.streamed_response.end_of_stream = req.request_body.end_of_stream
                yield ext_proc.ProcessingResponse(request_body=ext_proc.BodyResponse(response=cr))


async def serve_baseline(kind: str, port: int) -> None:
    from llmd_sdk.extproc import (
        ExtProcStream,
        GrpcServer,
        StreamContext,
        ext_proc_registrar,
        wait_for_signal,
    )

    def register(server: grpc.aio.Server) -> None:
        from extproc_roundtrip import EchoServicer  # the foundation benchmark's bare echo

        echo = FullDuplexEcho() if kind == "echo-full-duplex" else EchoServicer()
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(echo, server)

    def factory(ctx: StreamContext) -> ExtProcStream:
        return ExtProcStream(ctx)

    registrars = [register] if kind.startswith("echo") else [ext_proc_registrar(factory)[1]]
    server = GrpcServer(f"127.0.0.1:{port}", registrars)
    await server.start()
    await wait_for_signal()
    await server.stop(1)


class Server:
    """A subject in its own process tree; CPU time read from /proc."""

    def __init__(self, kind: str, workers: int = 1) -> None:
        self.kind = kind
        self.workers = workers
        # One call for all three ports: separate free_port() calls may hand out the same port
        # twice, and a BBR whose health port collides dies after its gRPC port already answered.
        self.port, health_port, metrics_port = free_ports(3)
        self.metrics_port = 0
        if kind.startswith("echo") or kind == "sdk":
            self.proc = spawn([__file__, "--serve", kind, "--port", str(self.port)])
            self._wait_or_stop(lambda: wait_for_port(self.port, START_TIMEOUT_S, self.proc))
            return
        self.metrics_port = metrics_port
        bbr = Path(sys.executable).with_name("llmd-bbr")
        self.proc = subprocess.Popen(
            [
                str(bbr),
                "--host=127.0.0.1",
                f"--grpc-port={self.port}",
                f"--health-port={health_port}",
                f"--metrics-port={self.metrics_port}",
                f"--models-config={MODELS}",
                f"--workers={workers}",
                "--log-level=WARNING",
                "--grace-period=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_or_stop(lambda: wait_for_port(self.port, START_TIMEOUT_S, self.proc))
        if workers > 1:
            self._wait_or_stop(self._wait_workers_ready)

    def _wait_or_stop(self, wait: Callable[[], None]) -> None:
        """A server that does not come up is stopped, not left running after the benchmark."""
        try:
            wait()
        except BaseException:
            stop(self.proc)
            raise

    def _wait_workers_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{self.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as r:
                    text = r.read().decode()
                if f"bbr_workers_ready {float(self.workers)}" in text:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.workers} workers not ready")

    def pids(self) -> list[int]:
        out = [self.proc.pid]
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if path.exists():
            out += [int(p) for p in path.read_text().split()]
        return out

    def cpu_seconds(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def close(self) -> None:
        stop(self.proc)


# ------------------------------------------------------------------------------- client
def chat_body(size: int) -> bytes:
    """An OpenAI chat request of about `size` bytes; `messages` first, then `model`."""
    turn = "Explain how a gateway routes a request to the right model server, step by step. "
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are concise."}]
    doc: dict[str, Any] = {"messages": messages, "model": MODEL, "max_tokens": 128, "stream": True}
    while len(json.dumps(doc)) < size:
        role = "user" if len(messages) % 2 else "assistant"
        messages.append({"role": role, "content": turn * 4})
    body = json.dumps(doc).encode()
    return body


def exchange_messages(
    mode: str, body: bytes
) -> tuple[ext_proc.ProcessingRequest, list[ext_proc.ProcessingRequest]]:
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        ":authority": "gateway",
        ":scheme": "http",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-request-id": "b1946ac9-2d3f-4c2f-9e1c-6c1c1f9a3e7b",
        "user-agent": "OpenAI/Python 1.54.0",
    }
    first = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=envoy_base.HeaderMap(
                headers=[
                    envoy_base.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()
                ]
            )
        )
    )
    first.protocol_config.request_body_mode = MODES[mode]  # type: ignore[assignment]
    if mode == "buffered":
        chunks = [body]
    else:
        chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    bodies = [
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=c, end_of_stream=i == len(chunks) - 1)
        )
        for i, c in enumerate(chunks)
    ]
    return first, bodies


async def drive(
    port: int, mode: str, size: int, seconds: float, concurrency: int, check: bool
) -> dict[str, Any]:
    body = chat_body(size)
    headers, bodies = exchange_messages(mode, body)
    latencies: list[float] = []
    # Separate connections, so that SO_REUSEPORT can spread them over workers.
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(max(1, concurrency // 4))
    ]
    stubs = [ext_proc_grpc.ExternalProcessorStub(c) for c in channels]

    async def one(stub: Any) -> list[Any]:
        t0 = time.perf_counter()
        call = stub.Process()
        got: list[Any] = []
        await call.write(headers)
        if mode == "buffered":
            got.append(await call.read())
            await call.write(bodies[0])
            got.append(await call.read())
        else:
            for b in bodies:
                await call.write(b)
            while True:
                resp = await call.read()
                got.append(resp)
                if resp.WhichOneof("response") == "immediate_response":
                    break
                sr = resp.request_body.response.body_mutation.streamed_response
                if resp.WhichOneof("response") == "request_body" and sr.end_of_stream:
                    break
        await call.done_writing()
        await call.read()  # EOF
        latencies.append(time.perf_counter() - t0)
        return got

    try:
        if check:  # the subject really routes: the model header is in the answer
            answers = await one(stubs[0])
            text = b"".join(a.SerializeToString() for a in answers)
            if MODEL.encode() not in text or b"x-gateway-model-name" not in text:
                raise RuntimeError("BBR did not set x-gateway-model-name")
        for _ in range(20):
            await one(stubs[0])
        latencies.clear()
        deadline = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            stub = stubs[i % len(stubs)]
            while time.perf_counter() < deadline:
                await one(stub)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return {"requests": len(latencies), "wall_s": wall, "latencies": latencies}


def run_clients(
    server: Server, mode: str, size: int, seconds: float, concurrency: int, clients: int
) -> dict[str, float]:
    """`clients` driver processes at once; server CPU measured around them."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"c{i}.json" for i in range(clients)]
        cpu0 = server.cpu_seconds()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--drive",
                    f"--port={server.port}",
                    f"--mode={mode}",
                    f"--size={size}",
                    f"--seconds={seconds}",
                    f"--concurrency={concurrency}",
                    f"--result={out}",
                    *(["--check"] if server.kind == "bbr" else []),
                ]
            )
            for out in outs
        ]
        codes = [p.wait() for p in procs]
        cpu1 = server.cpu_seconds()
        if any(codes):
            raise RuntimeError(f"a client failed: exit codes {codes}")
        results = [json.loads(o.read_text()) for o in outs]
    latencies = [x for r in results for x in r["latencies"]]
    n = len(latencies)
    wall = max(r["wall_s"] for r in results)
    # CPU is measured over the clients' whole life (warm-up included); the warm-up adds
    # 21 exchanges per client, counted here so the per-request figure stays fair.
    warm = 21 * clients
    return {
        "requests": n,
        "rps": n / wall,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "cpu_us_per_req": (cpu1 - cpu0) / (n + warm) * 1e6,
    }


# --------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--serve", choices=["echo-buffered", "echo-full-duplex", "sdk"], help=argparse.SUPPRESS
    )
    ap.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per subject")
    ap.add_argument("--concurrency", type=int, default=16, help="streams in flight per client")
    ap.add_argument("--modes", default="buffered,full-duplex", help="body modes to run")
    ap.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_baseline(args.serve, args.port))
        return 0
    if args.drive:
        result = asyncio.run(
            drive(args.port, args.mode, args.size, args.seconds, args.concurrency, args.check)
        )
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.smoke:
        args.seconds, args.rounds, args.modes, args.max_workers = 0.3, 1, "buffered", 1
    modes = [m for m in args.modes.split(",") if m]

    cases: list[dict[str, Any]] = []
    for mode in modes:
        servers: dict[str, Server] = {}
        try:
            for kind in (f"echo-{mode}", "sdk", "bbr"):
                servers[kind.split("-")[0]] = Server(kind)
            for size_name, size in SIZES.items():
                rounds: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
                for _ in range(args.rounds):
                    for kind, server in servers.items():
                        rounds[kind].append(
                            run_clients(server, mode, size, args.seconds, args.concurrency, 1)
                        )
                cases.append({"mode": mode, "size": size_name, "rounds": rounds})
        finally:
            for server in servers.values():
                server.close()

    scaling: list[dict[str, Any]] = []
    for n in range(1, max(1, args.max_workers) + 1):
        server = Server("bbr", workers=n)
        try:
            r = run_clients(server, "buffered", SIZES["4KiB"], args.seconds, args.concurrency, n)
        finally:
            server.close()
        scaling.append({"workers": n, **r})

    rows = []
    summary = []
    for case in cases:
        med = {
            kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for kind, rs in case["rounds"].items()
        }
        cost_ratio = med["bbr"]["cpu_us_per_req"] / med["echo"]["cpu_us_per_req"]
        rps_ratio = med["echo"]["rps"] / med["bbr"]["rps"]
        summary.append(
            {
                "mode": case["mode"],
                "size": case["size"],
                "median": med,
                "cost_ratio_cpu": cost_ratio,
                "cost_ratio_rps": rps_ratio,
            }
        )
        labels = {"echo": "bare echo", "sdk": "SDK base, no-op", "bbr": "llmd-bbr"}
        for kind in ("echo", "sdk", "bbr"):
            m = med[kind]
            rows.append(
                {
                    "mode": case["mode"],
                    "body": case["size"],
                    "subject": labels[kind],
                    "req/s": m["rps"],
                    "p50 ms": m["p50_ms"],
                    "p99 ms": m["p99_ms"],
                    "server CPU us/req": m["cpu_us_per_req"],
                    "cost vs echo": ""
                    if kind == "echo"
                    else (f"{m['cpu_us_per_req'] / med['echo']['cpu_us_per_req']:.2f}x"),
                    "req/s echo/x": ""
                    if kind == "echo"
                    else f"{med['echo']['rps'] / m['rps']:.2f}x",
                }
            )
    columns = ["mode", "body", "subject", "req/s", "p50 ms", "p99 ms", "server CPU us/req"]
    print(table(rows, [*columns, "cost vs echo", "req/s echo/x"]))
    base = scaling[0]["rps"]
    for s in scaling:
        s["speedup"] = s["rps"] / base
    print()
    print(
        table(
            [
                {
                    "workers": s["workers"],
                    "clients": s["workers"],
                    "req/s": s["rps"],
                    "p99 ms": s["p99_ms"],
                    "speed-up": f"{s['speedup']:.2f}x",
                }
                for s in scaling
            ],
            ["workers", "clients", "req/s", "p99 ms", "speed-up"],
        )
    )
    worst = max(s["cost_ratio_cpu"] for s in summary)
    print(
        f"\nper-request cost (server CPU), BBR / echo: worst {worst:.2f}x "
        f"(target <= {TARGET_COST_RATIO}x)\n"
        f"{args.rounds} alternating rounds x {args.seconds}s, {args.concurrency} streams in flight; "
        f"medians of rounds; {os.cpu_count()} CPUs seen, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    write_json(
        args.out,
        {
            "benchmark": "bbr_throughput",
            "config": {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "modes": modes,
                "sizes": SIZES,
                "max_workers": args.max_workers,
                "smoke": args.smoke,
            },
            "cases": summary,
            "rounds": cases,
            "workers_scaling": scaling,
            "worst_cost_ratio_cpu": worst,
            "target_cost_ratio": TARGET_COST_RATIO,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
