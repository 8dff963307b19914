"""Retry policies with tenacity's injectable sleep (and an injectable clock for deadlines):
no test here waits for real."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from typing import Any

import grpc
import httpx
import pytest
from llmd_sdk.retry import (
    CONNECT,
    SCRAPE,
    RetryPolicy,
    connect_retry,
    is_transient,
    scrape_retry,
)


class FakeTime:
    """A clock that only moves when the code under test sleeps (or an attempt says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def sleep_sync(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Events:
    """A structlog-shaped logger that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def failing(times: int, error: BaseException, result: str = "ok") -> Any:
    calls = {"n": 0}

    async def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return result

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


async def test_waits_are_full_jitter_within_the_exponential_window_and_capped() -> None:
    random.seed(20240601)
    by_attempt: dict[int, list[float]] = {}
    for _ in range(300):
        fake = FakeTime()
        retrying = connect_retry(
            attempts=10, deadline=None, sleep=fake.sleep, clock=fake.clock, logger=Events()
        )
        with pytest.raises(ConnectionRefusedError):
            await retrying(failing(100, ConnectionRefusedError(errno.ECONNREFUSED, "refused")))
        assert len(fake.sleeps) == 9  # 10 attempts, 9 waits between them
        for n, slept in enumerate(fake.sleeps, start=1):
            by_attempt.setdefault(n, []).append(slept)
    for n, samples in by_attempt.items():
        window = min(2.0, 0.05 * 2 ** (n - 1))
        assert all(0.0 <= s <= window for s in samples), (n, window, max(samples))
        # Full jitter spreads over the whole window, not just its top or bottom.
        assert min(samples) < 0.25 * window and max(samples) > 0.75 * window
    assert max(by_attempt[9]) <= 2.0 and max(by_attempt[9]) > 1.5  # the 2 s cap is reached


async def test_stops_after_the_attempts_and_raises_the_last_error() -> None:
    fake, events = FakeTime(), Events()
    attempt = failing(10, httpx.ConnectError("connection refused"))
    with pytest.raises(httpx.ConnectError, match="connection refused"):
        await scrape_retry(sleep=fake.sleep, clock=fake.clock, logger=events)(attempt)
    assert attempt.calls["n"] == SCRAPE.attempts == 3
    assert [e for e, _ in events.events] == ["retrying", "retrying", "giving up"]
    first = events.events[0][1]
    assert first["policy"] == "scrape" and first["attempt"] == 1 and first["max_attempts"] == 3
    assert first["error"] == "ConnectError: connection refused"
    assert 0 <= first["sleep_s"] <= 0.05


async def test_deadline_stops_before_a_sleep_would_cross_it() -> None:
    fake = FakeTime()
    calls = []

    async def slow_refusal() -> None:
        calls.append(1)
        if len(calls) > 50:
            raise RuntimeError("the deadline was ignored")  # permanent: ends the test
        fake.now += 0.3  # each connect attempt takes 300 ms of (fake) time
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    retrying = connect_retry(
        attempts=None,
        deadline=2.0,
        initial=0.4,
        max_wait=0.4,
        sleep=fake.sleep,
        clock=fake.clock,
        logger=Events(),
    )
    start = fake.now
    with pytest.raises(ConnectionRefusedError):
        await retrying(slow_refusal)
    # Every wait ended before the deadline; the give-up came before sleeping past it.
    elapsed = fake.now - start
    assert elapsed <= 2.0 + 0.3  # at most the attempt that was running at the deadline
    assert len(fake.sleeps) >= 3


async def test_permanent_errors_are_not_retried() -> None:
    fake = FakeTime()
    attempt = failing(5, ValueError("bad request body"))
    with pytest.raises(ValueError):
        await connect_retry(sleep=fake.sleep, clock=fake.clock, logger=Events())(attempt)
    assert attempt.calls["n"] == 1 and fake.sleeps == []


async def test_decorator_and_async_for_forms_succeed_after_transient_failures() -> None:
    fake = FakeTime()
    attempt = failing(2, TimeoutError("scrape timed out"), result="metrics")

    @scrape_retry(sleep=fake.sleep, clock=fake.clock, logger=Events()).wraps
    async def scrape() -> str:
        return str(await attempt())

    assert await scrape() == "metrics"
    assert attempt.calls["n"] == 3 and len(fake.sleeps) == 2

    tries = 0
    async for try_ in connect_retry(sleep=fake.sleep, clock=fake.clock, logger=Events()):
        with try_:
            tries += 1
            if tries < 4:
                raise ConnectionResetError(errno.ECONNRESET, "reset")
    assert tries == 4


def test_synchronous_form_uses_the_same_policy() -> None:
    fake = FakeTime()
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EHOSTUNREACH, "no route to host")
        return 7

    retrying = CONNECT.with_(attempts=5).retrying(
        sleep=fake.sleep_sync, clock=fake.clock, logger=Events()
    )
    assert retrying(flaky) == 7
    assert len(fake.sleeps) == 2 and all(0 <= s <= 0.1 for s in fake.sleeps)


@pytest.mark.integration
async def test_connects_once_the_server_comes_up() -> None:
    """A real refused connection on loopback, retried until a server listens there."""
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[asyncio.Server] = []

    async def start_server_on_second_wait(seconds: float) -> None:
        if len(waits) == 1 and not servers:
            servers.append(await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port))
        waits.append(seconds)

    waits: list[float] = []
    attempts = 0
    try:
        async for try_ in connect_retry(sleep=start_server_on_second_wait, logger=Events()):
            with try_:
                attempts += 1
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
        assert attempts == 3 and len(waits) == 2
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def _grpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError(), True),
        (socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"), True),
        (OSError(errno.ENETUNREACH, "network unreachable"), True),
        (FileNotFoundError(errno.ENOENT, "no such file"), False),
        (ValueError("bad"), False),
        (httpx.ReadTimeout("read timed out"), True),
        (_grpc_error(grpc.StatusCode.UNAVAILABLE), True),
        (_grpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (_grpc_error(grpc.StatusCode.INVALID_ARGUMENT), False),
    ],
    ids=repr,
)
def test_what_counts_as_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (404, False)])
def test_http_status_errors(status: int, transient: bool) -> None:
    request = httpx.Request("GET", "http://engine:8000/metrics")
    response = httpx.Response(status, request=request)
    error = httpx.HTTPStatusError("status", request=request, response=response)
    assert is_transient(error) is transient


def test_policies_reject_settings_that_never_stop_or_never_wait() -> None:
    with pytest.raises(ValueError, match="set attempts or deadline"):
        RetryPolicy("x", attempts=None, deadline=None)
    with pytest.raises(ValueError, match="initial <= max_wait"):
        RetryPolicy("x", initial=3.0, max_wait=2.0)
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        connect_retry(attempts=0)
    assert (CONNECT.initial, CONNECT.max_wait) == (0.05, 2.0)
