"""Gateway overhead: a direct call to the engine vs the full local request path.

The engine is an llmd-sim with no model latency (`--time-scale 0`, the default), so what is
measured is the request path itself. Subjects, each driven by the same sequential client:

    direct        client -> engine
    gateway       client -> dev gateway -> BBR (ext_proc) -> EPP (ext_proc) -> engine, the
                  EPP seeing the response too (FULL_DUPLEX_STREAMED both ways, as the local
                  stack and the Gateway API Inference Extension configure Envoy)
    gateway-req   the same, with the EPP on the request path only (response body NONE)

Rounds alternate between subjects so machine noise hits all alike; per subject the median of
the rounds' p50 and p99 is reported, and the added milliseconds over direct.

    uv run --no-sync python benchmarks/gateway_overhead.py [--smoke] [--max-tokens N] [--out F]

`--max-tokens 64` shows the response path's share: the dev gateway passes the EPP each piece of
the body it reads, one ext_proc message each way (the gateway-req subject skips that). With no
model latency the engine writes a response's tokens faster than the gateway reads them, so they
arrive in a few pieces, as they would reach Envoy; `--time-scale 0.2` paces them (the H100
profile's decode steps, 5x faster), so each token is its own piece: the per-token cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import yaml
from _harness import machine, percentile, table, write_json

from llmd.local import GrpcHealthProbe, HttpProbe, LogSink, ProcessSpec, Supervisor, free_ports

MODEL = "bench-model"
EPP_CONFIG = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
            ],
        }
    ],
}
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What is the capital of France? " * 8}],
    "max_tokens": 4,
}


def py(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def processes(workdir: Path, time_scale: float) -> tuple[list[ProcessSpec], dict[str, str]]:
    (engine, bbr, bbr_h, epp, epp_h, epp_m, epp2, epp2_h, epp2_m, gw, gw2) = free_ports(11)
    engine_ep = f"127.0.0.1:{engine}"
    (workdir / "epp.yaml").write_text(yaml.safe_dump(EPP_CONFIG))
    (workdir / "models.yaml").write_text(yaml.safe_dump({"baseModels": [MODEL]}))
    specs = [
        ProcessSpec(
            "engine",
            [*py("llmd_sim.server"), "--model", MODEL, "--port", str(engine), "--host",
             "127.0.0.1", "--time-scale", str(time_scale), "--log-level", "WARNING",
             "--disable-log-requests"],
            probe=HttpProbe(f"http://{engine_ep}/health"),
        ),
        ProcessSpec(
            "bbr",
            [*py("llmd_bbr.server"), "--host", "127.0.0.1", "--grpc-port", str(bbr),
             "--health-port", str(bbr_h), "--metrics-port", "0", "--models-config",
             str(workdir / "models.yaml"), "--log-level", "WARNING"],
            probe=GrpcHealthProbe(f"127.0.0.1:{bbr_h}"),
        ),
    ]  # fmt: skip
    urls = {"direct": f"http://{engine_ep}"}
    for name, grpc, health, metrics, port, response_mode in (
        ("gateway", epp, epp_h, epp_m, gw, "FULL_DUPLEX_STREAMED"),
        ("gateway-req", epp2, epp2_h, epp2_m, gw2, "NONE"),
    ):
        specs.append(
            ProcessSpec(
                f"epp-{name}",
                [*py("llmd_epp"), "--host", "127.0.0.1", "--grpc-port", str(grpc),
                 "--grpc-health-port", str(health), "--metrics-port", str(metrics),
                 "--config-file", str(workdir / "epp.yaml"), "--endpoints", engine_ep,
                 "--log-level", "WARNING"],
                probe=GrpcHealthProbe(f"127.0.0.1:{health}"),
            )
        )  # fmt: skip
        doc = {
            "host": "127.0.0.1",
            "port": port,
            # As `llmd up` and the shipped BBR EnvoyFilter: BBR is not sent the response.
            "bbr": {"target": f"127.0.0.1:{bbr}", "response_header_mode": "SKIP"},
            "pools": [
                {
                    "name": "bench",
                    "models": [MODEL],
                    "epp": {
                        "target": f"127.0.0.1:{grpc}",
                        "request_body_mode": "FULL_DUPLEX_STREAMED",
                        "response_body_mode": response_mode,
                    },
                }
            ],
        }
        path = workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        specs.append(
            ProcessSpec(
                name,
                [*py("llmd.gateway"), "--config", str(path), "--log-level", "warning"],
                probe=HttpProbe(f"http://127.0.0.1:{port}/healthz"),
                stage=1,
            )
        )
        urls[name] = f"http://127.0.0.1:{port}"
    return specs, urls


async def one_round(client: httpx.AsyncClient, url: str, n: int, stream: bool) -> list[float]:
    out = []
    body = {**BODY, "stream": stream}
    for _ in range(n):
        t = time.perf_counter()
        if stream:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    pass
                assert r.status_code == 200
        else:
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
        out.append(time.perf_counter() - t)
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) from /proc; 0 where unreadable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Which processes each subject's requests pass through.
PATHS = {
    "direct": ["engine"],
    "gateway": ["gateway", "bbr", "epp-gateway", "engine"],
    "gateway-req": ["gateway-req", "bbr", "epp-gateway-req", "engine"],
}


async def idle_rates(pids: dict[str, int | None], seconds: float = 2.0) -> dict[str, float]:
    """CPU seconds per second each process spends with no requests (the EPPs' metric scrapes,
    health checks), to subtract from what a round used."""
    before = {p: cpu_seconds(pid) for p, pid in pids.items()}
    await asyncio.sleep(seconds)
    return {p: max(0.0, (cpu_seconds(pid) - before[p]) / seconds) for p, pid in pids.items()}


async def measure(
    urls: dict[str, str],
    rounds: int,
    n: int,
    stream: bool,
    pids: dict[str, int | None],
    idle: dict[str, float],
) -> dict[str, Any]:
    per: dict[str, list[list[float]]] = {k: [] for k in urls}
    cpu: dict[str, dict[str, float]] = {k: {} for k in urls}
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls.values():  # warm connections and caches
            await one_round(client, url, 5, stream)
        for _ in range(rounds):
            for name, url in urls.items():
                before = {p: cpu_seconds(pids.get(p)) for p in PATHS[name]}
                t0 = time.perf_counter()
                per[name].append(await one_round(client, url, n, stream))
                took = time.perf_counter() - t0
                for p in PATHS[name]:
                    used = cpu_seconds(pids.get(p)) - before[p] - idle.get(p, 0.0) * took
                    cpu[name][p] = cpu[name].get(p, 0.0) + max(0.0, used)
    out: dict[str, Any] = {}
    for name, rs in per.items():
        out[name] = {
            "requests": sum(len(r) for r in rs),
            "p50_ms": statistics.median(percentile(r, 50) for r in rs) * 1e3,
            "p99_ms": statistics.median(percentile(r, 99) for r in rs) * 1e3,
            # CPU milliseconds each process on the path spent per request: what the path
            # costs, independent of how busy the machine is.
            "cpu_ms_per_request": {
                p: round(c * 1e3 / (rounds * n), 3) for p, c in cpu[name].items()
            },
        }
    for row in out.values():
        row["added_p50_ms"] = row["p50_ms"] - out["direct"]["p50_ms"]
        row["added_p99_ms"] = row["p99_ms"] - out["direct"]["p99_ms"]
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-overhead-"))
    specs, urls = processes(workdir, args.time_scale)
    sup = Supervisor(specs, LogSink(sys.stderr, level="warning"))
    await sup.start(timeout=120)
    try:
        results = {}
        for stream in (False, True):
            key = "streamed" if stream else "unary"
            pids = {name: child.pid for name, child in sup.children.items()}
            idle = await idle_rates(pids)
            results[key] = await measure(urls, args.rounds, args.requests, stream, pids, idle)
    finally:
        await sup.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one short round (CI)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per round")
    ap.add_argument("--max-tokens", type=int, default=4, help="tokens per response (4)")
    ap.add_argument(
        "--time-scale", type=float, default=0.0, help="the engine's model time scale (0: none)"
    )
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    BODY["max_tokens"] = args.max_tokens
    if args.smoke:
        args.rounds, args.requests = 1, 20
    results = asyncio.run(main_async(args))
    rows = [
        {
            "mode": mode,
            "subject": name,
            **row,
            "path_cpu_ms": sum(row["cpu_ms_per_request"].values()),
            "router_cpu_ms": sum(v for k, v in row["cpu_ms_per_request"].items() if k != "engine"),
        }
        for mode, subjects in results.items()
        for name, row in subjects.items()
    ]
    print(table(rows, ["mode", "subject", "requests", "p50_ms", "p99_ms", "added_p50_ms",
                       "added_p99_ms", "path_cpu_ms", "router_cpu_ms"]))  # fmt: skip
    for row in rows:
        if row["subject"] != "direct":
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_request"].items())
            print(f"  {row['mode']:<8} {row['subject']:<11} CPU ms/request: {parts}")
    added = results["unary"]["gateway"]["added_p50_ms"]
    print(f"\ngateway path adds {added:.2f} ms p50 over a direct engine call (target < 3 ms)")
    print(f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    write_json(
        args.out,
        {
            "benchmark": "gateway_overhead",
            "smoke": args.smoke,
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "max_tokens": args.max_tokens,
            "time_scale": args.time_scale,
            "results": results,
            "added_p50_ms": added,
            "target_ms": 3.0,
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
