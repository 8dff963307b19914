"""Real engine processes and an EPP on loopback, and a gateway-like driver over the SDK's
Envoy-semantics client."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmd_epp.config import parse_settings
from llmd_epp.server import EPP
from llmd_sdk.extproc import BodyMode, EnvoyClient, FilterConfig, LocalReply

HERE = Path(__file__).parent
ENGINE = HERE / "engine_app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout}s")


@dataclass
class Engine:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.key}"

    def set_load(self, **values: Any) -> None:
        httpx.post(f"{self.url}/admin/load", json=values, timeout=5).raise_for_status()

    def served(self) -> int:
        return int(httpx.get(f"{self.url}/admin/stats", timeout=5).json()["served"])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def start_engines(n: int) -> list[Engine]:
    engines = []
    for i in range(n):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(ENGINE), "--port", str(port), "--name", f"e{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        engines.append(Engine(f"e{i}", port, proc))
    for e in engines:
        wait_http(f"{e.url}/health", e.proc)
    return engines


def stop_procs(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    es = start_engines(4)
    try:
        yield es
    finally:
        stop_procs([e.proc for e in es])


@dataclass
class Outcome:
    status: int
    endpoint: str | None = None
    metadata_endpoint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    local: LocalReply | None = None


class Driver:
    """Does what Envoy does around the EPP: request through ext_proc, forward to the endpoint
    the EPP chose, report the served endpoint and stream the response back through it."""

    def __init__(self, target: str, mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED) -> None:
        self.client = EnvoyClient(
            [
                FilterConfig(
                    "epp",
                    target,
                    request_body_mode=mode,
                    response_body_mode=mode,
                    message_timeout=30.0,
                )
            ]
        )
        self.http = httpx.AsyncClient(timeout=10)

    async def close(self) -> None:
        await self.client.close()
        await self.http.aclose()

    async def send(
        self,
        body: Mapping[str, Any] | bytes,
        headers: Mapping[str, str] | None = None,
        path: str = "/v1/completions",
        subset: list[str] | None = None,
    ) -> Outcome:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {":method": "POST", ":path": path, "content-type": "application/json"}
        hdrs.update(headers or {})
        metadata = (
            {"envoy.lb.subset_hint": {"x-gateway-destination-endpoint-subset": subset}}
            if subset is not None
            else None
        )
        async with self.client.exchange() as ex:
            out = await ex.process_request(hdrs, [raw[:7], raw[7:]], metadata=metadata)
            if out.local_reply is not None:
                return Outcome(out.local_reply.status, local=out.local_reply, headers=out.headers)
            dest = out.headers["x-gateway-destination-endpoint"]
            md = out.dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"]
            primary = dest.split(",")[0]
            upstream_headers = {k: v for k, v in out.headers.items() if not k.startswith(":")}
            resp = await self.http.post(
                f"http://{primary}{path}", content=out.body, headers=upstream_headers
            )
            rh = await ex.process_response_headers(
                resp.status_code,
                dict(resp.headers),
                end_of_stream=False,
                metadata={"envoy.lb": {"x-gateway-destination-endpoint-served": primary}},
            )

            async def chunks() -> AsyncIterator[bytes]:
                yield resp.content

            streamed = b"".join([c async for c in ex.process_response_body(chunks())])
            return Outcome(
                resp.status_code,
                endpoint=dest,
                metadata_endpoint=md,
                headers=out.headers,
                response_headers=rh.headers,
                body=streamed,
            )


def epp_settings(*args: str, endpoints: Sequence[Engine] = ()) -> Any:
    base = ["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0",
            "--metrics-port", "0", "--refresh-metrics-interval", "50ms", "--seed", "1"]  # fmt: skip
    if endpoints and "--endpoints-file" not in args and "--modelservice-url" not in args:
        base += ["--endpoints", ",".join(e.key for e in endpoints)]
    return parse_settings([*base, *args], env={})


@pytest.fixture
async def run_epp() -> AsyncIterator[Any]:
    started: list[EPP] = []

    async def start(settings: Any) -> EPP:
        epp = EPP(settings)
        await epp.start()
        started.append(epp)
        return epp

    yield start
    for epp in started:
        await epp.stop()


async def until(cond: Any, timeout: float, what: str) -> None:
    """Poll `cond` until it is truthy; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.01)


async def wait_scraped(epp: EPP, n: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (
        not all(e.metrics.updated_at > 0 for e in epp.store.all())
        or len(epp.store.candidates()) < n
    ):
        if loop.time() > deadline:
            raise AssertionError("endpoints were not scraped in time")
        await asyncio.sleep(0.01)
