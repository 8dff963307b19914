"""Fixtures: a real redis-server on a free loopback port, and the index backends."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from llmd_sdk.kvcache.index import InMemoryIndex, KVBlockIndex
from llmd_sdk.kvcache.index.redis import RedisIndex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own: no persistence, stopped after the session."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def redis_index(redis_url: str) -> AsyncIterator[RedisIndex]:
    idx = await RedisIndex(redis_url).connect()
    await idx._r.flushdb()
    try:
        yield idx
    finally:
        await idx.aclose()


@pytest.fixture(params=["memory", "redis"])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[KVBlockIndex]:
    """Every backend: the same suite must pass on each."""
    if request.param == "memory":
        yield InMemoryIndex(capacity=100_000)
        return
    url = request.getfixturevalue("redis_url")
    idx = await RedisIndex(url).connect()
    await idx._r.flushdb()
    try:
        yield idx
    finally:
        await idx.aclose()
