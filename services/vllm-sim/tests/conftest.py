from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmd_sim.config import parse_args
from llmd_sim.server import SimState, build_state, create_app


@asynccontextmanager
async def sim_client(*argv: str) -> AsyncIterator[tuple[httpx.AsyncClient, SimState]]:
    """An in-process simulator (engines running in this event loop) and a client for it."""
    state = build_state(parse_args(list(argv)))
    app = create_app(state)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            yield client, state


@pytest.fixture
def make_sim() -> Callable[..., Any]:
    return sim_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimProcess:
    """`llmd-sim` as a real process on a free port."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llmd_sim.server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-format", "console", *argv]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmd-sim-{self.port}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmd-sim exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"llmd-sim not ready on {self.url}:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def sim_process() -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def start(*argv: str, env: dict[str, str] | None = None) -> SimProcess:
        p = SimProcess(*argv, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
