"""`llmd-bbr --workers N`: N worker processes sharing the ext_proc port, under one parent.

Python runs one request at a time per process; BBR's work is CPU-bound, so more cores need
more processes. Each worker binds the ext_proc port with SO_REUSEPORT (the kernel spreads
connections across them) and answers gRPC health there. The parent:

- starts the workers and restarts one that dies (with backoff), never more than N at once;
- serves gRPC health on the health port (SERVING while at least one worker is ready);
- serves `/metrics`: the workers write prometheus-client multiprocess files, the parent sums them;
- on SIGTERM/SIGINT turns NOT_SERVING, passes SIGTERM to every worker (each drains its open
  streams within the grace period), kills any that outlive grace + 5 s, and exits.

Each worker holds the read end of a pipe whose write end only the parent holds: if the parent
dies, even by SIGKILL, the workers see EOF and shut down as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmd_sdk.extproc import GrpcServer, wait_for_signal
from llmd_sdk.health import HealthServicer, HealthState
from llmd_sdk.telemetry import get_logger, start_metrics_server
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import multiprocess as prom_mp

from llmd_bbr.config import BBRSettings
from llmd_bbr.metrics import UpstreamCounters

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_KILL_MARGIN = 5.0
_READY_TIMEOUT = 60.0
_STARTUP_ATTEMPTS = 3


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    failures: int = 0  # consecutive early deaths, for the restart backoff
    life_w: int = -1  # write end of the parent-liveness pipe, held by the parent
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: BBRSettings, argv: Sequence[str] | None, log: Any) -> None:
        self.settings = settings
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.log = log
        self.workers = [_Worker(i) for i in range(settings.workers)]
        self.stopping = False
        self.health = HealthState(["envoy.service.ext_proc.v3.ExternalProcessor"])
        self.registry = CollectorRegistry(auto_describe=True)
        self.mp_dir = tempfile.mkdtemp(prefix="llmd-bbr-metrics-")
        workers_metrics = prom_mp.MultiProcessCollector(None, path=self.mp_dir)  # type: ignore[no-untyped-call]
        self.registry.register(workers_metrics)
        self.registry.register(UpstreamCounters(workers_metrics.collect))
        self.restarts = Counter(
            "bbr_worker_restarts", "Workers restarted after dying.", registry=self.registry
        )
        self.ready_gauge = Gauge(
            "bbr_workers_ready", "Workers serving now.", registry=self.registry
        )
        self._health_server: GrpcServer | None = None
        self._metrics: Any = None
        self._fatal = asyncio.Event()

    # ------------------------------------------------------------------ workers
    def _command(self, worker: _Worker, ready_w: int, life_r: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llmd_bbr.server",
            *self.argv,
            "--workers",
            "1",
            "--worker-index",
            str(worker.index),
            "--ready-fd",
            str(ready_w),
            "--parent-fd",
            str(life_r),
        ]

    async def _spawn(self, worker: _Worker) -> None:
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        os.set_inheritable(ready_w, True)
        os.set_inheritable(life_r, True)
        env = {**os.environ, MULTIPROC_ENV: self.mp_dir}
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self._command(worker, ready_w, life_r),
                env=env,
                pass_fds=(ready_w, life_r),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
            os.close(life_r)
        worker.life_w = life_w
        worker.started = time.monotonic()
        worker.ready = False
        self.log.info("worker started", worker=worker.index, worker_pid=worker.proc.pid)
        worker.tasks = [
            asyncio.create_task(self._await_ready(worker, ready_r)),
            asyncio.create_task(self._await_exit(worker)),
        ]

    async def _await_ready(self, worker: _Worker, ready_r: int) -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(ready_r, 1)
            except OSError:
                data = b""
            if not got.done():
                got.set_result(data)

        os.set_blocking(ready_r, False)
        loop.add_reader(ready_r, readable)
        try:
            data = await asyncio.wait_for(got, _READY_TIMEOUT)
        except TimeoutError:
            data = b""
            self.log.error("worker not ready in time", worker=worker.index)
        finally:
            loop.remove_reader(ready_r)
            os.close(ready_r)
        if data == b"R":
            worker.ready = worker.ever_ready = True
            self._update_health()

    async def _await_exit(self, worker: _Worker) -> None:
        proc = worker.proc
        assert proc is not None
        code = await proc.wait()
        worker.ready = False
        with contextlib.suppress(OSError):
            os.close(worker.life_w)
        prom_mp.mark_process_dead(proc.pid, self.mp_dir)  # type: ignore[no-untyped-call]
        self._update_health()
        if self.stopping:
            self.log.info("worker exited", worker=worker.index, worker_pid=proc.pid, code=code)
            return
        lived = time.monotonic() - worker.started
        worker.failures = 0 if lived > 30 else worker.failures + 1
        if not worker.ever_ready and worker.failures >= _STARTUP_ATTEMPTS:
            self.log.error(
                "worker keeps failing before it serves; giving up",
                worker=worker.index,
                code=code,
                attempts=worker.failures,
            )
            self._fatal.set()
            return
        delay = min(30.0, 0.5 * 2 ** max(0, worker.failures - 1)) if worker.failures else 0.0
        self.log.error(
            "worker died; restarting",
            worker=worker.index,
            worker_pid=proc.pid,
            code=code,
            restart_in_s=delay,
        )
        self.restarts.inc()
        if delay:
            await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(worker)

    def _update_health(self) -> None:
        ready = sum(w.ready for w in self.workers)
        self.ready_gauge.set(ready)
        self.health.set_ready(ready > 0)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self._health_server = GrpcServer(
            f"{self.settings.host}:{self.settings.health_port}",
            [HealthServicer(self.health).add_to_server],
        )
        await self._health_server.start()
        self._metrics = start_metrics_server(
            self.settings.metrics_port, self.registry, self.settings.host
        )
        for worker in self.workers:
            await self._spawn(worker)
        self.log.info(
            "supervising",
            workers=len(self.workers),
            ext_proc=f"{self.settings.host}:{self.settings.grpc_port}",
            health=f"{self.settings.host}:{self._health_server.port}",
            metrics=f"{self.settings.host}:{self._metrics.port}",
        )
        signalled = asyncio.ensure_future(wait_for_signal((signal.SIGTERM, signal.SIGINT)))
        fatal = asyncio.ensure_future(self._fatal.wait())
        await asyncio.wait([signalled, fatal], return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            fatal.cancel()
            self.log.info("shutting down workers", signal=signal.Signals(signalled.result()).name)
            return await self.shutdown()
        signalled.cancel()
        await self.shutdown()
        return 2

    async def shutdown(self) -> int:
        self.stopping = True
        self.health.shutdown()
        live = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in live:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_delay + self.settings.grace_period + _KILL_MARGIN
        waits = [asyncio.create_task(w.proc.wait()) for w in live if w.proc is not None]
        clean = True
        if waits:
            _, pending = await asyncio.wait(waits, timeout=deadline)
            if pending:
                clean = False
                for w in live:
                    if w.proc is not None and w.proc.returncode is None:
                        self.log.error("worker outlived the grace period; killing", worker=w.index)
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.kill()
                await asyncio.wait(pending)
        tasks = [t for w in self.workers for t in w.tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)  # exit bookkeeping, then whatever is left
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for w in self.workers:
            # A worker still starting up when our SIGTERM came dies of it: that is clean too.
            if w.proc is not None and w.proc.returncode not in (0, None, -signal.SIGTERM):
                clean = False
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
        shutil.rmtree(self.mp_dir, ignore_errors=True)
        self.log.info("stopped", clean=clean)
        return 0 if clean else 1


async def supervise(settings: BBRSettings, argv: Sequence[str] | None) -> int:
    log = get_logger("llmd_bbr").bind(role="supervisor", pid=os.getpid())
    sup = Supervisor(settings, argv, log)
    try:
        return await sup.run()
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        await sup.shutdown()
        return 2
