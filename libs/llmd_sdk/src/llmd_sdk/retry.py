"""Shared retry policies on tenacity: exponential backoff with full jitter, capped, stopping
after a number of attempts or before a deadline, logging every retry.

The n-th wait is drawn uniformly from [0, min(max_wait, initial * 2**(n-1))] ("full jitter"):
with the defaults 0-50 ms, 0-100 ms, 0-200 ms, ... up to 0-2 s. A retry that would sleep past
the deadline is not made; the last error is raised as it was.

    async for attempt in connect_retry():            # an AsyncRetrying
        with attempt:
            await channel.channel_ready()

    @scrape_retry().wraps
    async def scrape(url: str) -> str: ...

Only transient errors are retried (`is_transient`): refused or reset connections, timeouts,
DNS failures, httpx transport errors and 429/502/503/504 responses, gRPC UNAVAILABLE,
DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED, Redis connection errors.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

__all__ = [
    "CONNECT",
    "SCRAPE",
    "RetryLogger",
    "RetryPolicy",
    "connect_retry",
    "is_transient",
    "scrape_retry",
]

DEFAULT_INITIAL_S = 0.05
DEFAULT_MAX_WAIT_S = 2.0

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EAGAIN,
}
_TRANSIENT_HTTP_STATUS = {429, 502, 503, 504}
_TRANSIENT_GRPC_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying. Library error types are checked only when their
    library is already imported (an httpx error cannot exist without httpx)."""
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code in _TRANSIENT_HTTP_STATUS
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        name = getattr(code(), "name", None) if callable(code) else None
        return name in _TRANSIENT_GRPC_CODES
    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is not None:
        return isinstance(exc, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError)
    return False


class RetryLogger(Protocol):
    """What retries are logged to: a structlog logger (the default) or anything alike."""

    def warning(self, event: str, **kw: Any) -> Any: ...


class _StopBeforeDeadline(stop_base):
    """Stop when the next sleep would end past `budget` seconds after the first attempt began,
    on an injectable clock. Start times are kept per call, so one policy object can serve a
    decorator called many times."""

    def __init__(self, budget: float, clock: Callable[[], float]) -> None:
        self.budget = budget
        self.clock = clock
        self._starts: weakref.WeakKeyDictionary[RetryCallState, float] = weakref.WeakKeyDictionary()

    def begin(self, retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            self._starts[retry_state] = self.clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        start = self._starts.get(retry_state)
        elapsed = 0.0 if start is None else self.clock() - start
        return elapsed + retry_state.upcoming_sleep >= self.budget


def _error_of(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """A named backoff policy. `attempts` and `deadline` (seconds from the first attempt) both
    stop retrying; either may be None, not both."""

    name: str
    attempts: int | None = 10
    deadline: float | None = 30.0
    initial: float = DEFAULT_INITIAL_S
    max_wait: float = DEFAULT_MAX_WAIT_S
    retry_on: Callable[[BaseException], bool] = field(default=is_transient, compare=False)

    def __post_init__(self) -> None:
        if self.attempts is None and self.deadline is None:
            raise ValueError(f"retry policy {self.name}: set attempts or deadline, or both")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"retry policy {self.name}: attempts must be >= 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"retry policy {self.name}: deadline must be > 0")
        if not 0 < self.initial <= self.max_wait:
            raise ValueError(f"retry policy {self.name}: need 0 < initial <= max_wait")

    def with_(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def _arguments(self, logger: RetryLogger | None, clock: Callable[[], float]) -> dict[str, Any]:
        log: RetryLogger = logger or structlog.get_logger("llmd_sdk.retry")
        stop: stop_base = stop_after_attempt(self.attempts) if self.attempts else stop_never
        deadline = _StopBeforeDeadline(self.deadline, clock) if self.deadline else None
        if deadline is not None:
            stop = stop | deadline if self.attempts else deadline

        def before_sleep(retry_state: RetryCallState) -> None:
            log.warning(
                "retrying",
                policy=self.name,
                attempt=retry_state.attempt_number,
                max_attempts=self.attempts,
                sleep_s=round(retry_state.upcoming_sleep, 4),
                error=_describe(_error_of(retry_state)),
            )

        def give_up(retry_state: RetryCallState) -> Any:
            error = _error_of(retry_state)
            log.warning(
                "giving up",
                policy=self.name,
                attempts=retry_state.attempt_number,
                error=_describe(error),
            )
            if error is not None:
                raise error
            return retry_state.outcome.result() if retry_state.outcome else None

        return {
            "wait": wait_random_exponential(multiplier=self.initial, max=self.max_wait),
            "stop": stop,
            "retry": retry_if_exception(self.retry_on),
            "before": deadline.begin if deadline is not None else None,
            "before_sleep": before_sleep,
            "retry_error_callback": give_up,
            "reraise": True,
        }

    def async_retrying(
        self,
        *,
        logger: RetryLogger | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncRetrying:
        """An `AsyncRetrying` (use with `async for attempt in ...` or `.wraps(fn)`). `sleep`
        and `clock` are injectable so tests can run backoff without waiting."""
        arguments = self._arguments(logger, clock)
        if arguments["before"] is None:
            del arguments["before"]
        return AsyncRetrying(sleep=sleep or asyncio.sleep, **arguments)

    def retrying(
        self,
        *,
        logger: RetryLogger | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Retrying:
        """The same policy for synchronous code."""
        arguments = self._arguments(logger, clock)
        if arguments["before"] is None:
            del arguments["before"]
        return Retrying(sleep=sleep or time.sleep, **arguments)


# Connecting to a peer that may still be starting (a gRPC server, Redis, an engine).
CONNECT = RetryPolicy("connect", attempts=10, deadline=30.0)
# A metrics scrape: a few quick tries; the next scrape interval comes soon anyway.
SCRAPE = RetryPolicy("scrape", attempts=3, deadline=2.0)


class _Default(enum.Enum):
    """Marks an argument left at the policy's default (None means "no limit")."""

    DEFAULT = enum.auto()


DEFAULT = _Default.DEFAULT


def _policy(
    base: RetryPolicy,
    attempts: int | _Default | None,
    deadline: float | _Default | None,
    initial: float | None,
    max_wait: float | None,
    retry_on: Callable[[BaseException], bool] | None,
    name: str | None,
) -> RetryPolicy:
    return base.with_(
        attempts=base.attempts if attempts is DEFAULT else attempts,
        deadline=base.deadline if deadline is DEFAULT else deadline,
        initial=initial if initial is not None else base.initial,
        max_wait=max_wait if max_wait is not None else base.max_wait,
        retry_on=retry_on or base.retry_on,
        name=name or base.name,
    )


def connect_retry(
    *,
    attempts: int | _Default | None = DEFAULT,
    deadline: float | _Default | None = DEFAULT,
    initial: float | None = None,
    max_wait: float | None = None,
    retry_on: Callable[[BaseException], bool] | None = None,
    name: str | None = None,
    logger: RetryLogger | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncRetrying:
    """Retrying for connects: 10 attempts or 30 s, waits 0-50 ms doubling up to 0-2 s.
    Arguments override the defaults (None for `attempts` or `deadline` removes that limit)."""
    policy = _policy(CONNECT, attempts, deadline, initial, max_wait, retry_on, name)
    return policy.async_retrying(logger=logger, sleep=sleep, clock=clock)


def scrape_retry(
    *,
    attempts: int | _Default | None = DEFAULT,
    deadline: float | _Default | None = DEFAULT,
    initial: float | None = None,
    max_wait: float | None = None,
    retry_on: Callable[[BaseException], bool] | None = None,
    name: str | None = None,
    logger: RetryLogger | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncRetrying:
    """Retrying for scrapes: 3 attempts or 2 s, waits 0-50 ms doubling up to 0-2 s."""
    policy = _policy(SCRAPE, attempts, deadline, initial, max_wait, retry_on, name)
    return policy.async_retrying(logger=logger, sleep=sleep, clock=clock)
