"""One replica's life: start, wait healthy, register, probe, restart with backoff, drain, stop.

The restart loop is a tenacity `AsyncRetrying`: a crash or too many failed health checks raises
`ReplicaFailure`, tenacity waits a capped exponential backoff (grown by the failures inside the
window, so a replica that has been healthy for a while starts again from the initial delay) and
stops retrying once `restart.maxFailures` failures fall inside `restart.windowSeconds`. The
replica is then `failed`: it stays listed with its last error until someone restarts it.

A planned stop (scale down, restart, shutdown) drains: the endpoint turns `draining` (the EPP
stops picking it), is deregistered, in-flight requests get up to `drain.graceSeconds` to finish
(read from the engine's `/metrics`), then the process group gets SIGTERM and, after
`drain.stopTimeoutSeconds`, SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base

from llmd_modelservice.metrics import SupervisorMetrics
from llmd_modelservice.planner import ReplicaPlan
from llmd_modelservice.probes import in_flight, probe_health
from llmd_modelservice.process import EngineProcess
from llmd_modelservice.registry import Endpoint, Registry
from llmd_modelservice.spec import DrainSpec, HealthSpec, RestartSpec

log = structlog.get_logger("llmd_modelservice.replica")

Intent = Literal["none", "stop", "restart"]


class ReplicaState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


class ReplicaFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class _RecentFailureBackoff(wait_base):
    """initial x 2^(failures in window - 1), capped."""

    def __init__(self, runner: ReplicaRunner) -> None:
        self.runner = runner

    def __call__(self, retry_state: RetryCallState) -> float:
        r = self.runner.restart_spec
        n = max(1, self.runner.recent_failures())
        return float(min(r.backoff_max_seconds, r.backoff_initial_seconds * 2 ** (n - 1)))


class ReplicaRunner:
    """Owns one replica slot; `start()` launches its supervising task."""

    def __init__(
        self,
        plan: ReplicaPlan,
        *,
        health: HealthSpec,
        restart: RestartSpec,
        drain: DrainSpec,
        registry: Registry,
        metrics: SupervisorMetrics,
        client: httpx.AsyncClient,
        log_dir: Path,
        labels: dict[str, str] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.plan = plan
        self.health = health
        self.restart_spec = restart
        self.drain = drain
        self.registry = registry
        self.metrics = metrics
        self.client = client
        self.log_path = log_dir / f"{plan.replica_id}.log"
        self.labels = labels or {}
        self._on_change = on_change
        self.state = ReplicaState.PENDING
        self.last_error: str | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._failures: collections.deque[float] = collections.deque()
        self._proc: EngineProcess | None = None
        self._exit_task: asyncio.Future[int] | None = None
        self._wake = asyncio.Event()
        self._intent: Intent = "none"
        self._drain_on_stop = True
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(replica=plan.replica_id, model=plan.model)

    # -- public ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.plan.address}:{self.plan.port}"

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.returncode is None else None

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name=f"replica:{self.plan.replica_id}")

    async def stop(self, *, drain: bool = True) -> None:
        """Planned stop; returns when the process is gone."""
        self._intent = "stop"
        self._drain_on_stop = drain
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    def request_restart(self) -> bool:
        """Drain and start again (also revives a `failed` replica). False when stopping."""
        if self._intent == "stop" or self.done:
            return False
        self._intent = "restart"
        self._drain_on_stop = True
        self._wake.set()
        return True

    def recent_failures(self) -> int:
        cutoff = time.monotonic() - self.restart_spec.window_seconds
        while self._failures and self._failures[0] < cutoff:
            self._failures.popleft()
        return len(self._failures)

    def kill_now(self) -> None:
        if self._proc is not None:
            self._proc.kill_now()

    def status(self) -> dict[str, Any]:
        p = self.plan
        return {
            "id": p.replica_id,
            "model": p.model,
            "role": p.role,
            "index": p.index,
            "state": self.state.value,
            "endpoint": p.endpoint,
            "address": p.address,
            "port": p.port,
            "pid": self.pid,
            "devices": list(p.devices),
            "restarts": self.restarts,
            "recent_failures": self.recent_failures(),
            "last_error": self.last_error,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "command": p.command_line(),
            "log": str(self.log_path),
        }

    # -- loop -----------------------------------------------------------------------------

    def _set(self, state: ReplicaState) -> None:
        if state != self.state:
            self.state = state
            self._log.info("replica state", state=state.value)
            if self._on_change is not None:
                self._on_change()

    async def _main(self) -> None:
        try:
            while True:
                outcome = await self._supervise()
                if outcome == "failed":
                    self._wake.clear()
                    while self._intent == "none":
                        await self._wake.wait()
                        self._wake.clear()
                    outcome = self._intent
                if outcome == "restart":
                    self._intent = "none"
                    self._wake.clear()
                    self._failures.clear()
                    continue
                break
        finally:
            if self._proc is not None and self._proc.returncode is None:
                await self._proc.terminate(self.drain.stop_timeout_seconds)
            self.registry.remove(self.plan.replica_id)
            self._set(ReplicaState.STOPPED)

    async def _supervise(self) -> str:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ReplicaFailure),
            stop=self._give_up,
            wait=_RecentFailureBackoff(self),
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._run_once()
        except ReplicaFailure as exc:
            if self._intent != "none":
                return self._intent
            self._set(ReplicaState.FAILED)
            self.metrics.given_up.labels(self.plan.model).inc()
            self._log.error(
                "replica given up",
                failures=self.recent_failures(),
                window_seconds=self.restart_spec.window_seconds,
                last_error=str(exc),
                log=str(self.log_path),
            )
            return "failed"
        return self._intent

    def _give_up(self, retry_state: RetryCallState) -> bool:
        if self._intent != "none":
            return True
        return self.recent_failures() >= self.restart_spec.max_failures

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        reason = exc.reason if isinstance(exc, ReplicaFailure) else "error"
        self.restarts += 1
        self.metrics.restarts.labels(self.plan.model, reason).inc()
        delay = retry_state.upcoming_sleep
        self._log.warning("replica restarting", reason=reason, error=str(exc), backoff=delay)
        self._set(ReplicaState.BACKOFF)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _fail(self, reason: str, message: str) -> ReplicaFailure:
        self._failures.append(time.monotonic())
        self.last_error = message
        return ReplicaFailure(reason, message)

    async def _pause(self, seconds: float, *, wake: bool = True) -> None:
        """Sleep, waking early on a stop/restart request (if `wake`) or on process exit."""
        waits: set[asyncio.Future[Any]] = set()
        if self._exit_task is not None:
            waits.add(self._exit_task)
        wake_task = asyncio.ensure_future(self._wake.wait()) if wake else None
        if wake_task is not None:
            waits.add(wake_task)
        try:
            if waits:
                await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(seconds)
        finally:
            if wake_task is not None:
                wake_task.cancel()

    def _exited(self) -> int | None:
        t = self._exit_task
        return t.result() if t is not None and t.done() else None

    async def _run_once(self) -> None:
        if self._intent != "none":
            return
        self._set(ReplicaState.STARTING)
        try:
            self._proc = await EngineProcess.spawn(self.plan.argv, self.plan.env, self.log_path)
        except OSError as exc:
            raise self._fail("spawn", f"cannot start {self.plan.argv[0]!r}: {exc}") from None
        self._exit_task = asyncio.ensure_future(self._proc.wait())
        self.metrics.starts.labels(self.plan.model).inc()
        self.started_at = time.time()
        self.ready_at = None
        self._log.info("replica started", pid=self._proc.pid, port=self.plan.port)
        if not await self._wait_ready():
            await self._stop_process(drain=False)
            return
        self.ready_at = time.time()
        self.registry.upsert(self._endpoint("ready"))
        self._set(ReplicaState.READY)
        await self._monitor()

    async def _wait_ready(self) -> bool:
        assert self._proc is not None
        h = self.health
        deadline = time.monotonic() + h.startup_timeout_seconds
        poll = min(h.interval_seconds, 0.5)
        while True:
            if self._intent != "none":
                return False
            rc = self._exited()
            if rc is not None:
                raise self._fail(
                    "crash",
                    f"exited with code {rc} before becoming healthy: {self._proc.log_tail()}",
                )
            if time.monotonic() > deadline:
                await self._proc.terminate(self.drain.stop_timeout_seconds)
                raise self._fail(
                    "startup", f"not healthy after {h.startup_timeout_seconds:g}s (startup timeout)"
                )
            result = await probe_health(self.client, self.base_url, h.path, h.timeout_seconds)
            if result.ok:
                return True
            await self._pause(poll)

    async def _monitor(self) -> None:
        assert self._proc is not None
        h = self.health
        consecutive = 0
        while True:
            await self._pause(h.interval_seconds)
            if self._intent != "none":
                await self._stop_process(drain=self._drain_on_stop)
                return
            rc = self._exited()
            if rc is not None:
                self.registry.remove(self.plan.replica_id)
                raise self._fail("crash", f"exited with code {rc}: {self._proc.log_tail()}")
            result = await probe_health(self.client, self.base_url, h.path, h.timeout_seconds)
            self.metrics.health_latency.labels(self.plan.model).observe(result.seconds)
            if result.ok:
                consecutive = 0
                continue
            consecutive += 1
            self.metrics.health_failures.labels(self.plan.model).inc()
            self._log.warning(
                "health check failed",
                detail=result.detail,
                consecutive=consecutive,
                threshold=h.failure_threshold,
            )
            if consecutive >= h.failure_threshold:
                self.registry.remove(self.plan.replica_id)
                self._set(ReplicaState.STOPPING)
                await self._proc.terminate(self.drain.stop_timeout_seconds)
                raise self._fail(
                    "unhealthy", f"{consecutive} failed health checks, last: {result.detail}"
                )

    async def _stop_process(self, *, drain: bool) -> None:
        assert self._proc is not None
        started = time.monotonic()
        registered = self.registry.get(self.plan.replica_id) is not None
        if registered and drain:
            self._set(ReplicaState.DRAINING)
            self.registry.upsert(self._endpoint("draining"))
            self.registry.remove(self.plan.replica_id)
            await self._wait_drained()
        else:
            self.registry.remove(self.plan.replica_id)
        self._set(ReplicaState.STOPPING)
        rc = await self._proc.terminate(self.drain.stop_timeout_seconds)
        self.metrics.drain_seconds.labels(self.plan.model).observe(time.monotonic() - started)
        self._log.info("replica stopped", code=rc, seconds=round(time.monotonic() - started, 3))

    async def _wait_drained(self) -> None:
        d = self.drain
        deadline = time.monotonic() + d.grace_seconds
        while time.monotonic() < deadline:
            if self._exited() is not None:
                return
            n = await in_flight(
                self.client,
                self.base_url,
                self.plan.metrics_path,
                self.plan.engine,
                self.health.timeout_seconds,
            )
            if n == 0:
                return
            await self._pause(min(d.poll_interval_seconds, deadline - time.monotonic()), wake=False)
        self._log.warning("drain grace elapsed with requests in flight", grace=d.grace_seconds)

    def _endpoint(self, state: Literal["ready", "draining"]) -> Endpoint:
        p = self.plan
        return Endpoint(
            id=p.replica_id,
            model=p.model,
            namespace=p.namespace,
            role=p.role,
            address=p.address,
            port=p.port,
            state=state,
            engine=p.engine,
            served_names=list(p.served_names),
            loras=list(p.loras),
            metrics_path=p.metrics_path,
            kv_topic=p.kv_topic,
            kv_events_endpoint=p.kv_events_endpoint,
            hash_algo=p.hash_algo,
            hash_seed=p.hash_seed,
            block_size=p.block_size,
            labels=self.labels,
        )
