"""`llmd-epp` as a real process: one-line config errors, health, serving, graceful SIGTERM; and
the horizontal mode (`--workers 2`) sharing prefix state through a KVIndex server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import Driver, Engine, free_port, stop_procs
from .kvindex_server import start_index

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "epp"


def epp_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llmd_epp",
        "--host",
        "127.0.0.1",
        "--log-format",
        "console",
        *args,
    ]


def spawn(*args: str, capture: bool = False) -> subprocess.Popen[str]:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(epp_cmd(*args), stdout=out, stderr=subprocess.STDOUT, text=True)


def run_bad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(epp_cmd(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoints", "1.2.3.4:5", "--config-text",
          "kind: EndpointPickerConfig\nplugins: [{type: prefix-cache-scorer, parameters: "
          "{blockSizeTokens: many}}]\nschedulingProfiles: [{name: d}]"],
         "llmd-epp: --config-text: plugin 'prefix-cache-scorer': parameters.blockSizeTokens"),
        (["--endpoints", "1.2.3.4:5", "--config-text",
          "kind: EndpointPickerConfig\nplugins: [{type: magic-scorer}]\nschedulingProfiles: [{name: d}]"],
         "llmd-epp: --config-text: plugin 'magic-scorer': unknown plugin type"),
        ([], "llmd-epp: endpoints: give exactly one source"),
        (["--endpoints", "nope"], "llmd-epp: --endpoints[0]: 'nope' is not ip:port"),
        (["--endpoints", "1.2.3.4:5", "--drain-timeout", "soon", "--grpc-port", "0",
          "--grpc-health-port", "0", "--metrics-port", "0"],
         "llmd-epp: --drain-timeout: not a duration"),
        (["--endpoints", "1.2.3.4:5", "--shutdown-delay=-1s", "--grpc-port", "0"],
         "llmd-epp: --shutdown-delay: not a duration"),
        (["--endpoints", "1.2.3.4:5", "--refresh-metrics-interval", "0s"],
         "llmd-epp: --refresh-metrics-interval: must be positive, got '0s'"),
        (["--endpoints-file", "/nonexistent/endpoints.yaml"],
         "llmd-epp: --endpoints-file: cannot read /nonexistent/endpoints.yaml: No such file"),
    ],
)  # fmt: skip
def test_bad_start_up_is_one_line(args: list[str], message: str) -> None:
    proc = run_bad(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(message), lines[0]


def test_a_failed_endpoint_source_ends_the_process_in_one_line(tmp_path: Path) -> None:
    """Without a usable kubeconfig the pod source cannot start: the EPP exits 1 with one line
    naming the flag, instead of staying up, never ready, with no endpoints."""
    missing = tmp_path / "no-such-kubeconfig"
    proc = run_bad("--pool-name", "pool", "--kubeconfig", str(missing), "--grpc-port", "0",
                   "--grpc-health-port", "0", "--metrics-port", "0")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"llmd-epp: endpoint source failed: --kubeconfig {missing}: "), last


async def health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(resp.status)


async def until(cond: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)


async def test_serves_and_stops_gracefully_on_sigterm(engines: list[Engine]) -> None:
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    args = ["--endpoints", ",".join(e.key for e in engines), "--grpc-port", str(grpc_port),
            "--grpc-health-port", str(health_port), "--metrics-port", str(metrics_port),
            "--config-file", str(EXAMPLES / "default.yaml")]  # fmt: skip
    proc = spawn(*args, capture=True)
    try:
        serving = health_pb2.HealthCheckResponse.SERVING

        async def ready() -> bool:
            return await health(health_port, "readiness") == serving

        await until(ready, 30, "EPP readiness")
        driver = Driver(f"127.0.0.1:{grpc_port}")
        try:
            out = await driver.send({"model": "m", "prompt": "hello there " * 20})
        finally:
            await driver.close()
        assert out.status == 200
        assert out.endpoint is not None and out.endpoint.split(",")[0] in {e.key for e in engines}
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'llm_d_epp_request_outcomes_total{outcome="picked"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0
        assert proc.stdout is not None and "epp stopping" in proc.stdout.read()
    finally:
        stop_procs([proc])


async def test_keeps_serving_through_the_shutdown_delay_while_not_ready(
    engines: list[Engine],
) -> None:
    grpc_port, health_port = free_port(), free_port()
    args = ["--endpoints", ",".join(e.key for e in engines), "--grpc-port", str(grpc_port),
            "--grpc-health-port", str(health_port), "--metrics-port", "0",
            "--config-file", str(EXAMPLES / "default.yaml"), "--shutdown-delay", "4s",
            "--drain-timeout", "2s"]  # fmt: skip
    proc = spawn(*args, capture=True)
    try:
        serving = health_pb2.HealthCheckResponse.SERVING

        async def ready() -> bool:
            return await health(health_port, "readiness") == serving

        async def not_ready() -> bool:
            return await health(health_port, "readiness") != serving

        await until(ready, 30, "EPP readiness")
        proc.send_signal(signal.SIGTERM)
        await until(not_ready, 10, "NOT_SERVING after SIGTERM")
        # The gateway may still send a request before it sees the pod go: it is served.
        assert proc.poll() is None
        driver = Driver(f"127.0.0.1:{grpc_port}")
        try:
            out = await driver.send({"model": "m", "prompt": "hello there " * 20})
        finally:
            await driver.close()
        assert out.status == 200 and out.endpoint is not None
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0
        assert proc.stdout is not None and "shutdown delay" in proc.stdout.read()
    finally:
        stop_procs([proc])


PRECISE = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters: {timeout: 2s}   # a loaded CI machine; latency is the benchmark's business
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: precise-prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 1}
"""


def picked(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('llm_d_epp_request_outcomes_total{outcome="picked"}'):
            return float(line.split()[-1])
    return 0.0


async def test_horizontal_replicas_share_prefix_state_through_the_index(
    engines: list[Engine],
) -> None:
    """Two EPP replicas (as behind a Kubernetes Service) agree on the prefix holder because
    both ask the same index; a `--workers 2` group on one port set does too."""
    server, index, kv_port = await start_index()
    shared = "Shared system prompt for every tenant. " * 20
    holder = engines[2]
    index.plant(shared, holder.key, 12)
    common = ["--endpoints", ",".join(e.key for e in engines), "--config-text", PRECISE,
              "--kvmanager-address", f"127.0.0.1:{kv_port}"]  # fmt: skip
    procs: list[subprocess.Popen[str]] = []
    replicas = []
    for workers in (1, 1, 2):
        ports = [free_port() for _ in range(3)]
        while ports[2] + 1 in ports[:2]:
            ports[2] = free_port()
        args = [*common, "--workers", str(workers), "--grpc-port", str(ports[0]),
                "--grpc-health-port", str(ports[1]), "--metrics-port", str(ports[2])]  # fmt: skip
        procs.append(spawn(*args))
        replicas.append((workers, ports))
    drivers: list[Driver] = []
    try:
        async with httpx.AsyncClient() as http:

            async def all_up() -> bool:
                for workers, (_, hp, mp) in replicas:
                    if await health(hp, "readiness") != health_pb2.HealthCheckResponse.SERVING:
                        return False
                    for i in range(workers):
                        try:
                            await http.get(f"http://127.0.0.1:{mp + i}/metrics")
                        except httpx.HTTPError:
                            return False
                return True

            await until(all_up, 60, "replicas and workers up")
            drivers = [Driver(f"127.0.0.1:{gp}") for _, (gp, _, _) in replicas]
            outs = await asyncio.gather(
                *(
                    drivers[i % 3].send({"model": "m", "prompt": shared + f"question {i}"})
                    for i in range(30)
                )
            )
            assert all(o.status == 200 for o in outs)
            assert Counter(o.endpoint for o in outs) == {holder.key: 30}
            cold = [
                await drivers[0].send({"model": "m", "prompt": f"unrelated {i} " * 10})
                for i in range(8)
            ]
            assert len({o.endpoint for o in cold}) >= 2  # no index knowledge: spread
            counts = []
            for workers, (_, _, mp) in replicas:
                n = 0.0
                for i in range(workers):
                    n += picked((await http.get(f"http://127.0.0.1:{mp + i}/metrics")).text)
                counts.append(n)
        assert counts == [18.0, 10.0, 10.0]  # every replica decided its share
        assert index.calls >= 38
    finally:
        for d in drivers:
            await d.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(lambda: [p.wait(20) for p in procs])
        finally:
            stop_procs(procs)
            await server.stop(0)
