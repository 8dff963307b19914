"""Lifecycle benchmark of the local supervisor: how fast replicas come up, recover and drain,
and how fast endpoint changes reach a watcher, each against a baseline measured in the same run.

    uv run --no-sync python services/modelservice/benchmarks/lifecycle.py [--smoke] [--out f.json]

Baselines: starting the engine by hand and polling its /health (what the supervisor adds to a
start is its own overhead); a plain HTTP request to the API (what the watch adds to delivering
an endpoint change). The engine is the test suite's fake engine (a real HTTP process) unless
`--engine llmd-sim` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from llmd_modelservice.api import create_app
from llmd_modelservice.hardware import fallback_profile
from llmd_modelservice.process import EngineProcess
from llmd_modelservice.replica import ReplicaState
from llmd_modelservice.supervisor import Supervisor
from llmd_modelservice.validation import parse_model_service
from llmd_sdk.telemetry import configure_logging

FAKE = Path(__file__).resolve().parents[1] / "tests" / "fake_engine.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(engine: str) -> list[str] | None:
    return [sys.executable, str(FAKE)] if engine == "fake" else None


async def _wait(pred: Any, limit: float = 60.0, step: float = 0.002) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        await asyncio.sleep(step)


async def bare_start(engine: str, log_dir: Path) -> float:
    """Spawn one engine and poll /health every 2 ms: the floor for any supervisor."""
    port = _free_port()
    argv = [*(_command(engine) or ["llmd-sim"]), "--model", "m", "--port", str(port)]
    t0 = time.perf_counter()
    proc = await EngineProcess.spawn(argv, {}, log_dir / f"bare-{port}.log")
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    await proc.terminate(5)
    return elapsed


def _spec(engine: str, name: str, replicas: int) -> Any:
    eng: dict[str, Any] = {"kind": "sim"}
    if _command(engine):
        eng["command"] = _command(engine)
    return parse_model_service(
        {
            "metadata": {"name": name},
            "spec": {
                "model": {"name": "m"},
                "replicas": replicas,
                "engine": eng,
                "local": {"basePort": 0},
                "health": {"intervalSeconds": 0.05, "timeoutSeconds": 1},
                "restart": {"backoffInitialSeconds": 0.01, "maxFailures": 1000},
                "drain": {"graceSeconds": 5, "pollIntervalSeconds": 0.01},
            },
        }
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="llmd-ms-bench-"))
    bare = [await bare_start(args.engine, log_dir) for _ in range(args.iterations)]

    sup = Supervisor(
        [_spec(args.engine, "bench", args.replicas)], fallback_profile(), log_dir=log_dir
    )
    t0 = time.perf_counter()
    await sup.start()
    await _wait(lambda: len(sup.registry.endpoints()) == args.replicas)
    cold_all = time.perf_counter() - t0

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(sup, heartbeat_seconds=60),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
        )
    )
    server_task = asyncio.create_task(server.serve())
    await _wait(lambda: server.started)
    base = f"http://127.0.0.1:{port}"

    received: list[tuple[float, dict[str, Any]]] = []

    async def reader() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as c,
            c.stream("GET", f"{base}/v1/endpoints/watch") as resp,
        ):
            async for line in resp.aiter_lines():
                if line:
                    received.append((time.perf_counter(), json.loads(line)))

    watch_task = asyncio.create_task(reader())
    await _wait(lambda: any(e.get("synced") for _, e in received))

    recovery: list[float] = []
    watch_delay: list[float] = []
    request_rtt: list[float] = []
    async with httpx.AsyncClient() as client:
        for i in range(args.iterations):
            r = sup.replicas("bench")[i % args.replicas]
            pid = r.pid
            assert pid is not None
            before = len(received)
            restarts = r.restarts
            t_kill = time.perf_counter()
            os.kill(pid, signal.SIGKILL)

            def back(r: Any = r, restarts: int = restarts) -> bool:
                # Counted as restarted and serving again (pid alone is None once reaped).
                return bool(r.restarts > restarts and r.state == ReplicaState.READY)

            await _wait(back)
            recovery.append(time.perf_counter() - t_kill)
            # The recovered replica's ADDED event reaches the watcher.
            rid = r.plan.replica_id

            def readded(rid: str = rid, before: int = before) -> bool:
                return any(
                    e.get("type") == "ADDED" and e["endpoint"]["id"] == rid
                    for _, e in received[before:]
                )

            await _wait(readded)
            # Time a registry change directly: upsert -> line received.
            ep = sup.registry.get(rid)
            assert ep is not None
            n = len(received)
            t_up = time.perf_counter()
            sup.registry.upsert(ep.model_copy(update={"labels": {"bench": str(i)}}))
            await _wait(lambda n=n: len(received) > n, step=0.0002)
            watch_delay.append(received[n][0] - t_up)
            t_req = time.perf_counter()
            await client.get(f"{base}/v1/endpoints")
            request_rtt.append(time.perf_counter() - t_req)

    t_drain = time.perf_counter()
    await sup.scale("bench", 0)
    drain_all = time.perf_counter() - t_drain

    watch_task.cancel()
    server.should_exit = True
    await server_task
    await sup.shutdown(drain=False)

    med = statistics.median
    rows = {
        "engine_start_bare_s": med(bare),
        "supervised_cold_start_all_s": cold_all,
        "recovery_after_sigkill_s": med(recovery),
        "recovery_vs_bare_start_ratio": med(recovery) / med(bare),
        "watch_delivery_ms": med(watch_delay) * 1000,
        "api_request_rtt_ms": med(request_rtt) * 1000,
        "watch_vs_request_ratio": med(watch_delay) / med(request_rtt),
        "drain_and_stop_all_s": drain_all,
    }
    return {
        "benchmark": "modelservice-lifecycle",
        "engine": args.engine,
        "replicas": args.replicas,
        "iterations": args.iterations,
        "smoke": args.smoke,
        "results": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds: 2 replicas, 3 rounds")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--engine", choices=("fake", "llmd-sim"), default="fake")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args()
    configure_logging("modelservice-bench", "WARNING", json=False)
    if args.smoke:
        args.replicas, args.iterations = 2, 3
    out = asyncio.run(run(args))
    print(
        f"modelservice lifecycle ({args.engine}, {args.replicas} replicas, "
        f"{args.iterations} rounds, medians)"
    )
    print(f"{'metric':34} {'value':>10}")
    for k, v in out["results"].items():
        print(f"{k:34} {v:10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
