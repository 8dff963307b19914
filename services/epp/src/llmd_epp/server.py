"""`llmd-epp`: wiring. Loads the EndpointPickerConfig, starts the endpoint source, the metrics
scrapers, the ext_proc server (9002), gRPC health (9003) and Prometheus (9090), and drains on
SIGTERM/SIGINT. `--workers N` runs N such processes on the same ports (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmd_sdk.extproc import GrpcServer, ext_proc_registrar, wait_for_signal
from llmd_sdk.telemetry import configure_logging, get_logger, setup_tracing, start_metrics_server

from llmd_epp import __version__
from llmd_epp.config import EPPSettings, parse_settings
from llmd_epp.datalayer.datastore import Datastore
from llmd_epp.datalayer.scraper import MetricsScraper
from llmd_epp.datalayer.sources.kubernetes import KubernetesSource
from llmd_epp.datalayer.sources.modelservice import ModelServiceSource
from llmd_epp.datalayer.sources.static import StaticSource, parse_endpoint_list
from llmd_epp.director import Director, build_flow_controller
from llmd_epp.health import epp_health
from llmd_epp.kvindex_client import KVIndexClient
from llmd_epp.metrics import EPPMetrics
from llmd_epp.objectives import Objectives, parse_objectives
from llmd_epp.pickerconfig import PickerConfig, load_picker_config
from llmd_epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from llmd_epp.scheduling.registry import ConfigError
from llmd_epp.stream import stream_factory

log = get_logger("llmd_epp.server")
WORKER_ENV = "LLMD_EPP_WORKER_INDEX"


class EPP:
    """One EPP process's parts, started and stopped together (tests and benchmarks use it
    in-process)."""

    def __init__(self, settings: EPPSettings) -> None:
        self.settings = settings
        self.worker = int(os.environ.get(WORKER_ENV, "0"))
        self.reuse_port = WORKER_ENV in os.environ
        self.picker = self._load_picker()
        for warning in self.picker.warnings:
            log.warning("config warning", detail=warning)
        interval = settings.duration("refresh_metrics_interval")
        if interval and self.picker.data_source is not None:
            self.picker.data_source.refresh_interval = interval
        self.store = Datastore(settings.pool_name)
        self.metrics = EPPMetrics()
        self.metrics.info.labels("", __version__).set(1)
        for plugin in self.picker.plugins.values():
            if isinstance(plugin, PrecisePrefixCacheScorer):
                plugin.on_error = self.metrics.kvindex_errors.inc
        self.objectives = Objectives(self._load_objectives())
        self.source: Any = self._make_source()
        flow_enabled = {"on": True, "off": False}.get(settings.flow_control)
        self.director = Director(
            self.picker,
            self.store,
            self.metrics,
            objectives=self.objectives,
            pool_name=settings.pool_name,
            debug_scores=settings.debug_scores,
            plugin_timing_every=settings.plugin_timing_every,
        )
        self.director.flow = build_flow_controller(
            self.picker,
            self.store,
            enabled=flow_enabled,
            default_ttl=settings.duration("queue_ttl"),
            on_queue_change=self.director._queue_changed,
        )
        self.scraper: MetricsScraper | None = None
        if self.picker.data_source is not None:
            self.scraper = MetricsScraper(
                self.store,
                self.picker.data_source,
                self.picker.extractor,
                failure_threshold=settings.metrics_failure_threshold,
                on_error=lambda ep, exc: self.metrics.extract_errors.labels(
                    "core-metrics-extractor"
                ).inc(),
            )
        else:
            # No metrics are read, so staleness cannot mean anything.
            self.picker.detector.require_fresh = False
        self.health, self.health_servicer = epp_health()
        self.grpc: GrpcServer | None = None
        self.health_server: GrpcServer | None = None
        self.metrics_server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Set to the error when the endpoint source ends with one: `serve` then exits non-zero
        # rather than staying up, never ready, with no endpoints.
        self.source_failed: asyncio.Future[BaseException] | None = None

    # ------------------------------------------------------------- construction
    def _load_picker(self) -> PickerConfig:
        s = self.settings
        text: str | None = None
        source = "config"
        if s.config_file:
            try:
                text = Path(s.config_file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"--config-file: cannot read {s.config_file}: {exc.strerror}"
                ) from None
            source = s.config_file
        elif s.config_text:
            text, source = s.config_text, "--config-text"
        return load_picker_config(
            text,
            source=source,
            seed=None if s.seed < 0 else s.seed,
            deps={
                "kvindex_client_factory": KVIndexClient,
                "kvmanager_address": s.kvmanager_address,
            },
        )

    def _load_objectives(self) -> dict[str, int]:
        path = self.settings.objectives_file
        if not path:
            return {}
        try:
            return parse_objectives(Path(path).read_text(), path)
        except OSError as exc:
            raise ConfigError(f"--objectives-file: cannot read {path}: {exc.strerror}") from None

    def _make_source(self) -> Any:
        s = self.settings
        kind = s.source_kind
        if kind == "static":
            eps = parse_endpoint_list(s.endpoints) if s.endpoints else []
            # A changed file takes effect within one scrape interval.
            poll = self.picker.data_source.refresh_interval if self.picker.data_source else 0.05
            src = StaticSource(eps, s.endpoints_file or None, poll=max(poll, 0.02))
            src.prime(self.store)
            return src
        if kind == "modelservice":
            return ModelServiceSource(s.modelservice_url, s.modelservice_model)
        return KubernetesSource(s.pool_name, s.pool_namespace, s.kubeconfig)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        s = self.settings
        _, register = ext_proc_registrar(stream_factory(self.director))
        self.grpc = GrpcServer(f"{s.host}:{s.grpc_port}", [register], reuse_port=self.reuse_port)
        self.health_server = GrpcServer(
            f"{s.host}:{s.grpc_health_port}",
            [self.health_servicer.add_to_server],
            reuse_port=self.reuse_port,
        )
        await self.grpc.start()
        await self.health_server.start()
        metrics_port = s.metrics_port + self.worker if s.metrics_port else 0
        self.metrics_server = start_metrics_server(metrics_port, self.metrics.registry, s.host)
        if self.scraper is not None:
            await self.scraper.start()
        loop = asyncio.get_running_loop()
        self.source_failed = loop.create_future()
        self._tasks.append(loop.create_task(self._run_source(), name="endpoint source"))
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        if isinstance(self.source, KubernetesSource) and not s.objectives_file:
            self._tasks.append(
                loop.create_task(self.source.run_objectives(self.objectives), name="objectives")
            )
        self.director.flow.start()
        for p in self.picker.scheduler.plugins:
            client = getattr(p, "source", None)
            if isinstance(client, KVIndexClient) and not await client.connect():
                log.warning("kvmanager not reachable yet", address=client.address)
        log.info(
            "epp started",
            version=__version__,
            grpc_port=self.grpc.port,
            health_port=self.health_server.port,
            metrics_port=self.metrics_server.port,
            endpoint_source=s.source_kind,
            endpoints=len(self.store),
            worker=self.worker,
        )

    async def _run_source(self) -> None:
        try:
            await self.source.run(self.store)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("endpoint source failed", error=str(exc))
            if self.source_failed is not None and not self.source_failed.done():
                self.source_failed.set_result(exc)

    async def _housekeeping(self) -> None:
        while True:
            self.health.set_ready(self.store.synced)
            self.director.refresh_pool_gauges()
            await asyncio.sleep(0.5 if not self.store.synced else 1.0)

    async def stop(self) -> None:
        grace = self.settings.duration("drain_timeout") or 0.0
        self.health.shutdown()
        delay = self.settings.duration("shutdown_delay") or 0.0
        if delay > 0 and self.grpc is not None:
            # Health says NOT_SERVING, but Envoy learns that (or that the pod left the Service)
            # only after a while: refusing streams now would fail the requests it still sends.
            log.info("epp stopping after the shutdown delay", delay_s=delay)
            await asyncio.sleep(delay)
        if self.grpc is not None:
            await self.grpc.stop(grace)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.director.flow.stop()
        if self.scraper is not None:
            await self.scraper.stop()
        for p in self.picker.scheduler.plugins:
            source = getattr(p, "source", None)
            if isinstance(source, KVIndexClient):
                await source.close()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.metrics_server is not None:
            self.metrics_server.close()


async def serve(settings: EPPSettings) -> int:
    epp = EPP(settings)
    await epp.start()
    assert epp.source_failed is not None
    signalled = asyncio.ensure_future(wait_for_signal())
    await asyncio.wait({signalled, epp.source_failed}, return_when=asyncio.FIRST_COMPLETED)
    if signalled.done():
        log.info("epp stopping", signal=signal.Signals(signalled.result()).name)
        await epp.stop()
        return 0
    signalled.cancel()
    error = epp.source_failed.result()
    await epp.stop()
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    print(f"llmd-epp: endpoint source failed: {reason}", file=sys.stderr)
    return 1


def _run_workers(settings: EPPSettings, argv: Sequence[str]) -> int:
    """Start `settings.workers` EPP processes sharing the ports; forward signals; wait."""
    procs = []
    for i in range(settings.workers):
        env = {**os.environ, WORKER_ENV: str(i), "LLMD_EPP_WORKERS": "1"}
        procs.append(
            subprocess.Popen([sys.executable, "-m", "llmd_epp", *argv, "--workers", "1"], env=env)
        )

    def forward(sig: int, _: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes, key=abs) if codes else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = parse_settings(args)
        configure_logging("epp", settings.log_level, json=settings.log_format == "json")
        if settings.workers > 1 and WORKER_ENV not in os.environ:
            settings.source_kind  # noqa: B018 - validate before forking
            return _run_workers(settings, args)
        setup_tracing("llmd-epp")
        return asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"llmd-epp: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmd-epp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
