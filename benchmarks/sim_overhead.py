"""How much load one vllm-sim process carries, and how fast the discrete-event mode runs.

Three measurements, each against a baseline taken in the same run:

1. ``non_streaming``: requests/s one ``llmd-sim --time-scale 0`` process serves (no model
   latency: pure API + scheduling overhead), against a bare uvicorn app that returns a canned
   completion (the HTTP ceiling of this machine). Targets: 1,000 req/s.
2. ``streams``: N concurrent streaming requests with the default latency profile; compares the
   measured inter-chunk time with the step time the latency model predicts for that batch
   (1.0 = the process keeps up). Target: 300 streams.
3. ``des``: simulated requests per CPU-second of `llmd_sim.cluster` (10 engines, synthetic
   shared-prefix workload, round-robin), against the trace generation alone. Target: 5,000.

    python benchmarks/sim_overhead.py --out .bench-out/sim_overhead.json
    python benchmarks/sim_overhead.py --smoke          # a few seconds

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams, so that the client
costs as little CPU as possible next to the server on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    free_port,
    machine,
    percentile,
    spawn,
    stop,
    table,
    wait_for_port,
    write_json,
)

STREAM_PROMPT = "Tell me a long story."  # short: all streams are admitted in one step
BARE_APP = r"""
import sys, uvicorn
BODY = b'{"id":"cmpl-0","object":"text_completion","created":0,"model":"llmd-sim","choices":[{"index":0,"text":" a b c d e f g h","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":8,"total_tokens":16,"completion_tokens":8,"prompt_tokens_details":{"cached_tokens":0}}}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, loop="uvloop", http="httptools")
"""


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.w.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers = await self._head()
        if headers.get(b"transfer-encoding") == b"chunked":
            return status, await self._chunked()
        return status, await self.r.readexactly(int(headers.get(b"content-length", b"0")))

    async def stream(self, path: str, body: bytes) -> list[float]:
        """POST a streaming request; return the arrival time of every SSE data event."""
        self.w.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, _ = await self._head()
        assert status == 200, status
        times: list[float] = []
        buf = b""
        while True:
            size = int((await self.r.readline()).strip(), 16)
            if size == 0:
                await self.r.readline()
                return times
            buf += await self.r.readexactly(size)
            await self.r.readline()
            now = time.perf_counter()
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if event.startswith(b"data: ") and event != b"data: [DONE]":
                    times.append(now)

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        line = await self.r.readline()
        status = int(line.split()[1])
        headers: dict[bytes, bytes] = {}
        while True:
            h = await self.r.readline()
            if h in (b"\r\n", b""):
                return status, headers
            k, _, v = h.partition(b":")
            headers[k.strip().lower()] = v.strip()

    async def _chunked(self) -> bytes:
        out = b""
        while True:
            size = int((await self.r.readline()).strip(), 16)
            if size == 0:
                await self.r.readline()
                return out
            out += await self.r.readexactly(size)
            await self.r.readline()

    def close(self) -> None:
        self.w.close()


async def drive(port: int, total: int, concurrency: int, body: bytes) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        conn = await Conn.open(port)
        try:
            for _ in counter:
                t0 = time.perf_counter()
                status, _ = await conn.post("/v1/completions", body)
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def bench_non_streaming(total: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    body = json.dumps(
        {"model": "llmd-sim", "prompt": "The quick brown fox jumps over", "max_tokens": max_tokens}
    ).encode()
    out: dict[str, Any] = {"max_tokens": max_tokens}
    for name, args in (
        ("bare_uvicorn", ["-c", BARE_APP]),
        ("llmd_sim", ["-m", "llmd_sim.server", "--host", "127.0.0.1", "--time-scale", "0",
                      "--log-level", "warning"]),
    ):  # fmt: skip
        port = free_port()
        argv = [*args, str(port)] if name == "bare_uvicorn" else [*args, "--port", str(port)]
        proc = spawn(argv)
        try:
            wait_for_port(port, proc=proc)
            asyncio.run(drive(port, min(50, total), concurrency, body))  # warm-up
            cpu0 = server_cpu_s(proc.pid)
            res = asyncio.run(drive(port, total, concurrency, body))
            res["server_cpu_s"] = server_cpu_s(proc.pid) - cpu0
            res["rps_per_server_cpu_s"] = res["requests"] / max(res["server_cpu_s"], 1e-9)
            out[name] = res
        finally:
            stop(proc)
    out["ratio_sim_over_bare_rps"] = out["llmd_sim"]["rps"] / out["bare_uvicorn"]["rps"]
    return out


async def _streams(port: int, n: int, max_tokens: int) -> list[list[float]]:
    body = json.dumps(
        {"model": "llmd-sim", "prompt": STREAM_PROMPT, "max_tokens": max_tokens, "stream": True}
    ).encode()
    conns = [await Conn.open(port) for _ in range(n)]
    try:
        return await asyncio.gather(*(c.stream("/v1/completions", body) for c in conns))
    finally:
        for c in conns:
            c.close()


def bench_streams(n: int, max_tokens: int) -> dict[str, Any]:
    from llmd_sim.latency import LatencyModel, load_profile

    latency = LatencyModel(load_profile())
    port = free_port()
    # --max-num-seqs above the stream count: every stream decodes in the same batch (vLLM's
    # default of 256 would queue the rest, which measures the scheduler, not the server).
    proc = spawn(["-m", "llmd_sim.server", "--host", "127.0.0.1", "--port", str(port),
                  "--log-level", "warning", "--max-num-seqs", str(max(256, n))])  # fmt: skip
    try:
        wait_for_port(port, proc=proc)
        asyncio.run(_streams(port, 4, 4))  # warm-up
        prompt_tokens = _prompt_tokens(port)
        cpu0 = server_cpu_s(proc.pid)
        t0 = time.perf_counter()
        results = asyncio.run(_streams(port, n, max_tokens))
        wall = time.perf_counter() - t0
        cpu = server_cpu_s(proc.pid) - cpu0
        server_itl = _metric_mean(port, "vllm:inter_token_latency_seconds")
    finally:
        stop(proc)
    # Gaps between consecutive token chunks, leaving out the first (time to first token).
    # Steady decoding only: gaps after every stream has its first token (before that, steps
    # also carry prefill chunks and are much longer by design).
    all_started = max(t[0] for t in results if t)
    gaps = [b - a for times in results for a, b in itertools.pairwise(times) if a >= all_started]
    # Per stream: the mean chunk interval over its steady part (robust to a client read that
    # picks up several chunks at once).
    rates = []
    for times in results:
        steady = [t for t in times if t >= all_started]
        if len(steady) > 2:
            rates.append((steady[-1] - steady[0]) / (len(steady) - 1))
    complete = sum(1 for t in results if len(t) >= max_tokens)
    # The step time the latency model predicts with all n sequences decoding at mid-output.
    ctx = n * (prompt_tokens + max_tokens // 2)
    modelled = latency.step_time(0, 0, n, ctx)
    measured = percentile(rates, 50) if rates else float("nan")
    return {
        "streams": n,
        "completed": complete,
        "max_tokens": max_tokens,
        "wall_s": wall,
        "chunks_per_s": sum(len(t) for t in results) / wall,
        "prompt_tokens": prompt_tokens,
        "inter_chunk_p50_ms": measured * 1e3,
        "inter_chunk_gap_p99_ms": percentile(gaps, 99) * 1e3 if gaps else float("nan"),
        "modelled_step_ms": modelled * 1e3,
        "lag_ratio_measured_over_modelled": measured / modelled if modelled else float("nan"),
        "server_itl_mean_ms": server_itl * 1e3,
        "server_cpu_s": cpu,
        "server_cpu_utilisation": cpu / wall,
        "chunks_per_server_cpu_s": sum(len(t) for t in results) / max(cpu, 1e-9),
    }


def _prompt_tokens(port: int) -> int:
    async def go() -> int:
        conn = await Conn.open(port)
        try:
            _, body = await conn.post("/tokenize", json.dumps({"prompt": STREAM_PROMPT}).encode())
        finally:
            conn.close()
        return int(json.loads(body)["count"])

    return asyncio.run(go())


def _metric_mean(port: int, name: str) -> float:
    """sum / count of a histogram scraped from the server's /metrics."""

    async def get() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await r.read()
        w.close()
        return data

    text = asyncio.run(get()).decode(errors="replace")
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")


def bench_des(engines: int, requests: int, rate: float) -> dict[str, Any]:
    from llmd_sim.cluster import ClusterSimulator
    from llmd_sim.engine import EngineConfig
    from llmd_sim.latency import LatencyModel, load_profile
    from llmd_sim.routers import RoundRobinRouter
    from llmd_sim.trace import SyntheticWorkload

    work = SyntheticWorkload(
        num_requests=requests, rate_per_s=rate, num_prefixes=64, prefix_len=1024,
        suffix_len=(32, 256), output_len=(32, 256), seed=0,
    )  # fmt: skip
    c0 = time.process_time()
    generated = sum(1 for _ in work)
    gen_cpu = time.process_time() - c0
    sim = ClusterSimulator(
        engines,
        EngineConfig(num_gpu_blocks=28000),
        LatencyModel(load_profile()),
        RoundRobinRouter(),
    )
    res = sim.run(iter(work))
    s = res.summary()
    return {
        "engines": engines,
        "requests": generated,
        "sim_time_s": s["sim_time_s"],
        "engine_steps": s["engine_steps"],
        "cpu_time_s": res.cpu_time_s,
        "wall_time_s": res.wall_time_s,
        "sim_requests_per_cpu_s": s["sim_requests_per_cpu_s"],
        "trace_generation_cpu_s": gen_cpu,
        "sim_requests_per_cpu_s_excluding_trace": generated / max(res.cpu_time_s - gen_cpu, 1e-9),
        "ttft_p50_s": s["ttft_p50_s"],
        "prefix_hit_rate": s["prefix_hit_rate"],
    }


def _des_rows(des: dict[str, Any]) -> list[dict[str, Any]]:
    """The discrete-event mode's rows of the summary table."""
    return [
        {"measure": "DES simulated req / CPU-s", "value": des["sim_requests_per_cpu_s"], "target": 5000},
        {"measure": "  excluding trace generation", "value": des["sim_requests_per_cpu_s_excluding_trace"], "target": ""},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--stream-tokens", type=int, default=128)
    ap.add_argument("--des-engines", type=int, default=10)
    ap.add_argument("--des-requests", type=int, default=10_000)
    ap.add_argument(
        "--des-only", action="store_true", help="only the discrete-event measure (no servers)"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.requests, args.concurrency, args.streams, args.stream_tokens = 100, 8, 10, 8
        args.des_engines, args.des_requests = 2, 300

    if args.des_only:
        des = bench_des(args.des_engines, args.des_requests, rate=10.0 * args.des_engines)
        rows = [
            {"measure": f"DES {des['engines']} engines x {des['requests']} requests, CPU-s", "value": des["cpu_time_s"], "target": ""},
            *_des_rows(des),
        ]  # fmt: skip
        print(table(rows, ["measure", "value", "target"]))
        write_json(
            args.out,
            {"benchmark": "sim_overhead", "smoke": args.smoke, "machine": machine(), "des": des},
        )
        return 0

    non_streaming = bench_non_streaming(args.requests, args.concurrency, args.max_tokens)
    streams = bench_streams(args.streams, args.stream_tokens)
    des = bench_des(args.des_engines, args.des_requests, rate=10.0 * args.des_engines)
    rows = [
        {"measure": "non-streaming req/s (bare uvicorn)", "value": non_streaming["bare_uvicorn"]["rps"], "target": ""},
        {"measure": "non-streaming req/s (llmd-sim, time-scale 0)", "value": non_streaming["llmd_sim"]["rps"], "target": 1000},
        {"measure": "  ratio sim / bare", "value": non_streaming["ratio_sim_over_bare_rps"], "target": ""},
        {"measure": "  llmd-sim req per server CPU-s", "value": non_streaming["llmd_sim"]["rps_per_server_cpu_s"], "target": ""},
        {"measure": f"streams completed of {streams['streams']}", "value": streams["completed"], "target": 300},
        {"measure": "  steady inter-chunk ms (median stream)", "value": streams["inter_chunk_p50_ms"], "target": ""},
        {"measure": "  step ms (latency model)", "value": streams["modelled_step_ms"], "target": ""},
        {"measure": "  server-side ITL mean ms", "value": streams["server_itl_mean_ms"], "target": ""},
        {"measure": "  lag ratio measured / modelled", "value": streams["lag_ratio_measured_over_modelled"], "target": "~1"},
        {"measure": "  server CPU utilisation", "value": streams["server_cpu_utilisation"], "target": ""},
        {"measure": "  SSE chunks per server CPU-s", "value": streams["chunks_per_server_cpu_s"], "target": ""},
        *_des_rows(des),
    ]  # fmt: skip
    print(table(rows, ["measure", "value", "target"]))
    write_json(
        args.out,
        {
            "benchmark": "sim_overhead",
            "smoke": args.smoke,
            "machine": machine(),
            "non_streaming": non_streaming,
            "streams": streams,
            "des": des,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
