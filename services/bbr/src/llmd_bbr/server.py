"""Wiring and the `llmd-bbr` console script.

One process serves the ext_proc port (with gRPC health on it too), the gRPC health port and the
Prometheus port, and watches the model file. `--workers N` starts N such processes sharing the
ext_proc port (SO_REUSEPORT) under a supervising parent that serves health and the summed
metrics (`llmd_bbr.supervisor`).

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING, new streams are refused, open streams
get `--grace-period` seconds to finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmd_sdk.extproc import GrpcServer, ext_proc_registrar, wait_for_signal
from llmd_sdk.health import HealthServicer, HealthState
from llmd_sdk.settings import load_or_exit
from llmd_sdk.telemetry import (
    configure_logging,
    get_logger,
    get_tracer,
    new_registry,
    setup_tracing,
    start_metrics_server,
)
from llmd_sdk.telemetry.metrics import MetricsServer
from prometheus_client import CollectorRegistry

from llmd_bbr import __version__
from llmd_bbr.config import BBRSettings, split_worker_args
from llmd_bbr.metrics import BBRMetrics
from llmd_bbr.model_table import EMPTY_TABLE, ModelTable, TableError
from llmd_bbr.processor import BBRService
from llmd_bbr.reloader import ModelFileWatcher
from llmd_bbr.router import BodyRouter

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class BBRApp:
    """BBR in this process. `start()`, then `shutdown()`; ports 0 pick free ports."""

    def __init__(
        self,
        settings: BBRSettings,
        *,
        registry: CollectorRegistry | None = None,
        serve_health_port: bool = True,
        serve_metrics: bool = True,
        log: Any = None,
    ) -> None:
        self.settings = settings
        self.log = log if log is not None else get_logger("llmd_bbr")
        self.registry = registry if registry is not None else new_registry()
        # Worker processes write multiprocess files the parent sums; a scrape-time callback
        # would never reach those, so workers publish the open-stream count periodically.
        self._multiprocess = MULTIPROC_ENV in os.environ
        self.metrics = BBRMetrics(
            self.registry,
            active_streams=None if self._multiprocess else lambda: self.servicer.active_streams,
        )
        self.router = BodyRouter(EMPTY_TABLE, require_model=settings.require_model)
        tracer = None
        if settings.tracing:
            setup_tracing("llmd-bbr", endpoint=settings.otlp_endpoint)
            tracer = get_tracer("llmd_bbr")
        self.service = BBRService(
            router=self.router,
            metrics=self.metrics,
            log=self.log,
            max_body_bytes=settings.max_body_bytes,
            early_scan_bytes=settings.early_scan_bytes,
            assume_body_mode=settings.body_mode,
            tracer=tracer,
        )
        self.watcher: ModelFileWatcher | None = None
        if settings.models_config is not None:
            self.watcher = ModelFileWatcher(
                Path(settings.models_config),
                self.set_table,
                interval=settings.reload_interval,
                log=self.log,
                on_result=self._count_reload,
            )
        self.health = HealthState([EXT_PROC_SERVICE])
        health = HealthServicer(self.health)
        self.servicer, register_ext_proc = ext_proc_registrar(self.service.stream)
        self._ext_proc = GrpcServer(
            f"{settings.host}:{settings.grpc_port}",
            [register_ext_proc, health.add_to_server],
            reuse_port=True,
        )
        self._health_server: GrpcServer | None = None
        if serve_health_port:
            self._health_server = GrpcServer(
                f"{settings.host}:{settings.health_port}", [health.add_to_server]
            )
        self._serve_metrics = serve_metrics
        self._metrics_server: MetricsServer | None = None
        self.grpc_port = self._ext_proc.port
        self.health_port = self._health_server.port if self._health_server else 0
        self.metrics_port = 0
        self._shut_down = False
        self._gauges: asyncio.Task[None] | None = None

    def set_table(self, table: ModelTable) -> None:
        self.router.table = table  # one reference swap: requests see old or new, whole
        self.metrics.set_table(table.summary())

    def _count_reload(self, ok: bool) -> None:
        (self.metrics.reload_ok if ok else self.metrics.reload_failed).inc()

    async def start(self) -> None:
        if self.watcher is not None:
            self.watcher.load_initial()  # TableError: refuse to start on a bad file
        await self._ext_proc.start()
        if self._health_server is not None:
            await self._health_server.start()
        if self._serve_metrics:
            try:
                self._metrics_server = start_metrics_server(
                    self.settings.metrics_port, self.registry, self.settings.host
                )
            except OSError as exc:
                address = f"{self.settings.host}:{self.settings.metrics_port}"
                raise OSError(f"cannot bind metrics address {address}: {exc.strerror}") from None
            self.metrics_port = self._metrics_server.port
        if self.watcher is not None:
            self.watcher.start()
        if self._multiprocess:
            self._gauges = asyncio.create_task(self._publish_gauges(), name="bbr-gauges")
        self.health.set_ready()

    async def _publish_gauges(self) -> None:
        while True:
            self.metrics.set_active(self.servicer.active_streams)
            await asyncio.sleep(0.5)

    async def abort(self) -> None:
        """Close what `start` opened before it failed (no drain: nothing was served)."""
        self._shut_down = True
        await self._ext_proc.stop(0)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)

    async def shutdown(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new streams, let open ones finish for `grace` seconds."""
        if self._shut_down:
            return
        self._shut_down = True
        grace = self.settings.grace_period if grace is None else grace
        self.health.shutdown()
        if self.settings.shutdown_delay > 0:
            await asyncio.sleep(self.settings.shutdown_delay)
        open_streams = self.servicer.active_streams
        self.log.info("draining", open_streams=open_streams, grace_period=grace)
        await self._ext_proc.stop(grace)
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
            self.metrics.set_active(0)
        if self.watcher is not None:
            await self.watcher.stop()
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)


async def serve(
    settings: BBRSettings,
    *,
    worker_index: int | None = None,
    ready_fd: int | None = None,
    parent_fd: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or, for a worker, until the parent goes away)."""
    log = get_logger("llmd_bbr")
    if worker_index is not None:
        log = log.bind(worker=worker_index, pid=os.getpid())
    worker = worker_index is not None
    try:
        app = BBRApp(settings, serve_health_port=not worker, serve_metrics=not worker, log=log)
    except OSError as exc:  # a gRPC port is taken
        log.error("cannot start", error=str(exc))
        return 2
    try:
        await app.start()
    except TableError as exc:
        log.error("cannot start: model file not loaded", error=str(exc))
        await app.abort()
        return 2
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        await app.abort()
        return 2
    log.info(
        "serving",
        version=__version__,
        ext_proc=f"{settings.host}:{app.grpc_port}",
        health=None if worker else f"{settings.host}:{app.health_port}",
        metrics=None if worker else f"{settings.host}:{app.metrics_port}",
        models_config=str(settings.models_config) if settings.models_config else None,
    )
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"R")
            os.close(ready_fd)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()
    if app.watcher is not None:
        watcher = app.watcher

        def reload_now() -> None:
            task = loop.create_task(watcher.check(force=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reload_now)
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(wait_for_signal())]
    if parent_fd is not None:
        waiters.append(_parent_gone(parent_fd))
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for fut in pending:
        fut.cancel()
    reason = next(iter(done)).result()
    log.info("shutting down", reason=_reason(reason), grace_period=settings.grace_period)
    await app.shutdown()
    log.info("stopped")
    return 0


def _reason(value: Any) -> str:
    if isinstance(value, int):
        with contextlib.suppress(ValueError):
            return signal.Signals(value).name
    return str(value)


def _parent_gone(fd: int) -> asyncio.Future[str]:
    """Resolves when the parent's end of the pipe closes (the parent exited, even by SIGKILL)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not fut.done():
            loop.remove_reader(fd)
            fut.set_result("parent exited")

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    return fut


def main(argv: Sequence[str] | None = None) -> int:
    """`llmd-bbr`: see `llmd-bbr --help`. Bad settings: one line each on stderr, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    worker, rest = split_worker_args(argv)
    settings = load_or_exit(BBRSettings, rest, prog="llmd-bbr")
    configure_logging("llmd-bbr", settings.log_level, json=settings.log_json)
    if settings.workers > 1 and worker.worker_index is None:
        from llmd_bbr.supervisor import supervise

        return asyncio.run(supervise(settings, argv))
    return asyncio.run(
        serve(
            settings,
            worker_index=worker.worker_index,
            ready_fd=worker.ready_fd,
            parent_fd=worker.parent_fd,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
