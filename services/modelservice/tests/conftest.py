"""Fixtures: hardware profiles, a spec factory, the fake engine, a live API server."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from llmd_modelservice.api import create_app
from llmd_modelservice.hardware import fallback_profile
from llmd_modelservice.spec import ModelService
from llmd_modelservice.supervisor import Supervisor
from llmd_modelservice.validation import parse_model_service
from llmd_sdk.hardware import HardwareProfile

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")
GIB = 1024**3


def _gpu_profile(kind: str, name: str, count: int, mem_gib: float, arch: str | None) -> dict:
    return {
        "hostname": f"{kind}-node",
        "accelerator": kind,
        "devices": [
            {
                "kind": kind,
                "index": i,
                "name": name,
                "memory_total_bytes": int(mem_gib * GIB),
                "architecture": arch,
            }
            for i in range(count)
        ],
        "cpu": {
            "model_name": "Test CPU",
            "architecture": "x86_64",
            "physical_cores": 32,
            "logical_cores": 64,
            "memory_total_bytes": 512 * GIB,
            "numa_nodes": 2,
            "isa_flags": ["avx2", "avx512f"],
        },
    }


PROFILES: dict[str, dict[str, Any]] = {
    "nvidia": _gpu_profile("nvidia", "NVIDIA H100 80GB HBM3", 8, 79.6, "9.0"),
    "amd": _gpu_profile("amd", "AMD Instinct MI300X", 8, 192, "gfx942"),
    "intel-xpu": _gpu_profile("intel-xpu", "Intel Data Center GPU Max 1550", 4, 128, None),
    "tpu": _gpu_profile("tpu", "TPU v5e", 8, 16, "v5e"),
    "cpu": {
        **_gpu_profile("nvidia", "x", 0, 0, None),
        "hostname": "cpu-node",
        "accelerator": "cpu",
        "devices": [],
    },
}


@pytest.fixture
def profile() -> Callable[[str], HardwareProfile]:
    def make(kind: str) -> HardwareProfile:
        return HardwareProfile.model_validate(copy.deepcopy(PROFILES[kind]))

    return make


BASE_SPEC: dict[str, Any] = {
    "apiVersion": "llm-d.ai/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": "m"},
    "spec": {"model": {"name": "org/model"}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture
def merge() -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """Deep-merge spec overrides into a base spec (dicts merge, everything else replaces)."""
    return _merge


@pytest.fixture
def make_spec() -> Callable[..., ModelService]:
    """`make_spec(name, **spec_fields)` -> a validated ModelService (spec fields camelCase)."""

    def make(name: str = "m", **spec: Any) -> ModelService:
        doc = _merge(BASE_SPEC, {"metadata": {"name": name}, "spec": spec})
        return parse_model_service(doc)

    return make


@pytest.fixture
def fake_spec(
    make_spec: Callable[..., ModelService], tmp_path: Path
) -> Callable[..., ModelService]:
    """A spec that runs the fake engine with fast health checks; records under tmp_path."""
    state_dir = tmp_path / "engine-state"
    state_dir.mkdir()

    def make(name: str = "m", replicas: int = 1, env: dict[str, str] | None = None, **over: Any):
        spec: dict[str, Any] = {
            "replicas": replicas,
            "engine": {
                "kind": "sim",
                "command": [sys.executable, str(FAKE_ENGINE)],
                "env": {"FAKE_ENGINE_STATE_DIR": str(state_dir), **(env or {})},
            },
            "local": {"basePort": 0},
            "health": {
                "intervalSeconds": 0.1,
                "timeoutSeconds": 0.5,
                "failureThreshold": 2,
                "startupTimeoutSeconds": 20,
            },
            "restart": {"backoffInitialSeconds": 0.05, "backoffMaxSeconds": 0.2},
            "drain": {"graceSeconds": 10, "stopTimeoutSeconds": 3, "pollIntervalSeconds": 0.05},
        }
        return make_spec(name, **_merge(spec, over))

    make.state_dir = state_dir  # type: ignore[attr-defined]
    return make


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], limit: float = 20.0, step: float = 0.02
) -> None:
    """Poll a condition until it holds; fail the test with a clear message at the deadline."""
    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(step)


@pytest.fixture
def wait() -> Callable[..., Awaitable[None]]:
    return wait_until


@pytest.fixture
async def run_supervisor(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Supervisor]]]:
    """Start a Supervisor for specs; always shut it down (no orphan engines)."""
    started: list[Supervisor] = []

    async def start(*specs: ModelService) -> Supervisor:
        sup = Supervisor(list(specs), fallback_profile(), log_dir=tmp_path / "logs")
        await sup.start()
        started.append(sup)
        return sup

    yield start
    for sup in started:
        await sup.shutdown(drain=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve_api(sup: Supervisor, heartbeat: float = 0.5) -> AsyncIterator[str]:
    """The real FastAPI app on a free loopback port, served by uvicorn."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(sup, heartbeat_seconds=heartbeat),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, limit=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def api_server() -> Callable[..., contextlib.AbstractAsyncContextManager[str]]:
    return serve_api


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fail if a fake engine process outlives the test."""
    yield
    import subprocess

    out = subprocess.run(["pgrep", "-f", str(FAKE_ENGINE)], capture_output=True, text=True)
    assert out.stdout.strip() == "", f"orphan engine processes: {out.stdout.split()}"
