"""The real `llmd-bbr` process: startup errors, graceful shutdown, and `--workers N`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from bbr_helpers import MODELS
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmd_sdk.contracts import envoy_base, ext_proc, ext_proc_grpc

pytestmark = pytest.mark.integration

LLMD_BBR = Path(sys.executable).with_name("llmd-bbr")
HEADERS = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BBRProcess:
    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.grpc_port, self.health_port, self.metrics_port = (_free_port() for _ in range(3))
        models = tmp_path / "models.yaml"
        if not models.exists():
            models.write_text(MODELS)
        self.stderr_path = tmp_path / f"bbr-{self.grpc_port}.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(LLMD_BBR),
                "--host=127.0.0.1",
                f"--grpc-port={self.grpc_port}",
                f"--health-port={self.health_port}",
                f"--metrics-port={self.metrics_port}",
                f"--models-config={models}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def log_events(self) -> list[dict[str, object]]:
        lines = self.stderr_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def children(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(p) for p in path.read_text().split()}
        except FileNotFoundError:
            return set()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type]:
    started: list[BBRProcess] = []

    def start(*extra: str) -> BBRProcess:
        p = BBRProcess(tmp_path, *extra)
        started.append(p)
        return p

    yield start  # type: ignore[misc]
    for p in started:
        for child in p.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        p.close()


async def _health(port: int, service: str = "readiness") -> int | None:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            return int(resp.status)
    except grpc.aio.AioRpcError:
        return None


async def _until(cond, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


async def _serving(p: BBRProcess) -> None:
    async def ok() -> bool:
        if p.proc.poll() is not None:
            raise AssertionError(f"exited {p.proc.returncode}: {p.stderr_path.read_text()}")
        return await _health(p.health_port) == health_pb2.HealthCheckResponse.SERVING

    await _until(ok, what="SERVING")


def _headers_msg() -> ext_proc.ProcessingRequest:
    req = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=envoy_base.HeaderMap(
                headers=[
                    envoy_base.HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS.items()
                ]
            )
        )
    )
    req.protocol_config.request_body_mode = 4  # type: ignore[assignment]  # FULL_DUPLEX_STREAMED
    return req


def _body_msg(chunk: bytes, eos: bool) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=chunk, end_of_stream=eos))


async def _metric(p: BBRProcess, line_prefix: str) -> float | None:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=2)).text
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _metric_is(p: BBRProcess, name: str, value: float) -> bool:
    return await _metric(p, name) == value


async def _route_once(port: int, model: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(_headers_msg())
        await call.write(_body_msg(json.dumps({"model": model}).encode(), True))
        resp = await call.read()
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    mutation = resp.request_headers.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}[
        "x-gateway-model-name"
    ]


# ------------------------------------------------------------------------------ startup
def _settings_error(args: list[str], env: dict[str, str] | None = None) -> list[str]:
    proc = subprocess.run(
        [str(LLMD_BBR), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("llmd-bbr: invalid settings")
    return [line.strip() for line in lines[1:]]


def test_bad_flags_and_env_are_one_line_each_and_exit_2() -> None:
    assert _settings_error(["--grpc-port", "ninety", "--grace-period=-1"]) == [
        "grpc_port: must be an integer (got ninety)",
        "grace_period: must be >= 0 (got -1)",
    ]
    (line,) = _settings_error([], {"LLMD_BBR_ASSUME_BODY_MODE": "sideways"})
    assert line.startswith("assume_body_mode: body mode: 'sideways' is not one of")


def test_bad_model_file_at_startup_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("aliases: {a: a}\n")
    proc = subprocess.run(
        [str(LLMD_BBR), f"--models-config={bad}", "--grpc-port=0", "--health-port=0",
         "--metrics-port=0", "--host=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    event = json.loads(line)
    assert event["level"] == "error" and "cannot point to itself" in event["error"]


@pytest.mark.parametrize("taken", ["grpc", "health", "metrics"])
def test_a_taken_port_is_one_logged_line_and_exit_2(taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"grpc": 0, "health": 0, "metrics": 0, taken: port}
        proc = subprocess.run(
            [str(LLMD_BBR), "--host=127.0.0.1", f"--grpc-port={ports['grpc']}",
             f"--health-port={ports['health']}", f"--metrics-port={ports['metrics']}"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr, proc.stderr
    # gRPC's C core prints its own line for a failed bind; ours is the JSON one.
    (event,) = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert event["event"] == "cannot start" and event["level"] == "error"
    assert f"127.0.0.1:{port}" in event["error"], event


# --------------------------------------------------------------------------- shutdown
async def test_sigterm_drains_open_streams_and_refuses_new_ones(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn("--grace-period=20")
    await _serving(p)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{p.grpc_port}")
    call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
    await call.write(_headers_msg())
    await call.write(_body_msg(b'{"messages": [], "mod', False))  # model not known yet
    await _until(lambda: _metric(p, "bbr_active_streams"), what="stream open")
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    await _until(lambda: _not_serving(p.health_port), what="NOT_SERVING")

    async def refused() -> bool:
        try:
            await _route_once(p.grpc_port, "late")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False

    await _until(refused, what="new streams refused")
    assert p.proc.poll() is None  # still draining the open stream
    await call.write(_body_msg(b'el": "llama"}', True))
    headers = await call.read()
    mutation = headers.request_headers.response.header_mutation
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers}[
        "x-gateway-model-name"
    ] == b"meta-llama/Llama-3.1-8B-Instruct"
    body = await call.read()
    assert body.request_body.response.body_mutation.streamed_response.end_of_stream
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    await channel.close()
    assert await asyncio.to_thread(p.proc.wait, 20) == 0
    assert time.monotonic() - t0 < 20
    events = [e["event"] for e in p.log_events()]
    assert events[-3:] == ["shutting down", "draining", "stopped"]


async def _not_serving(port: int) -> bool:
    return await _health(port) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_streams_still_open_after_the_grace_period_are_cut(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn("--grace-period=1")
    await _serving(p)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{p.grpc_port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
        await call.write(_headers_msg())
        await call.write(_body_msg(b'{"messages": [', False))
        await _until(lambda: _metric(p, "bbr_active_streams"), what="stream open")
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(p.proc.wait, 15) == 0
        elapsed = time.monotonic() - t0
        assert 0.9 <= elapsed < 10
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()


# ---------------------------------------------------------------------------- workers
async def test_workers_share_the_port_are_supervised_and_stop_cleanly(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn("--workers=2", "--grace-period=5")
    await _serving(p)
    await _until(lambda: len(p.children()) == 2, what="two workers")
    await _until(lambda: _metric_is(p, "bbr_workers_ready", 2), what="both ready")
    # Many connections: the kernel spreads them over the workers.
    models = [f"m-{i}" for i in range(40)]
    got = await asyncio.gather(*(_route_once(p.grpc_port, m) for m in models))
    assert got == models
    assert await _metric(p, 'bbr_requests_total{outcome="routed"}') == 40
    # A worker that dies is replaced.
    victim = min(p.children())
    os.kill(victim, signal.SIGKILL)
    await _until(lambda: victim not in p.children() and len(p.children()) == 2, what="restart")
    await _until(lambda: _metric_is(p, "bbr_workers_ready", 2), what="replacement ready")
    assert await _metric(p, "bbr_worker_restarts_total") == 1
    assert await _route_once(p.grpc_port, "after-restart") == "after-restart"
    assert await _health(p.health_port) == health_pb2.HealthCheckResponse.SERVING
    workers = p.children()
    p.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 20) == 0
    for pid in workers:
        assert _gone(pid), pid


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


async def test_workers_stop_when_the_parent_is_killed(spawn) -> None:  # type: ignore[no-untyped-def]
    p = spawn("--workers=2")
    await _serving(p)
    await _until(lambda: len(p.children()) == 2, what="two workers")
    workers = p.children()
    p.proc.kill()
    p.proc.wait()
    await _until(
        lambda: all(_gone(pid) for pid in workers),
        what="orphaned workers exit",
    )
