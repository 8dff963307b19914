"""``llmd-kvmanager``: the global KV-cache index service.

Wiring only: configuration, logging, the `KVManager`, gRPC ``KVIndex`` on 9010 and HTTP
(health, metrics, pool membership) on 9011. SIGTERM/SIGINT stop it gracefully: no new requests,
in-flight ones finish, ingestion stops, the backend connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Iterator, Sequence

import grpc
import uvicorn
from llmd_sdk.health import HealthServicer
from llmd_sdk.settings import SettingsError
from llmd_sdk.telemetry import configure_logging, get_logger

from llmd_kvmanager import __version__
from llmd_kvmanager.config import KVManagerConfig, load_config
from llmd_kvmanager.grpc_api import add_to_server
from llmd_kvmanager.http_api import create_app
from llmd_kvmanager.manager import KVManager
from llmd_kvmanager.pool_watch import PoolWatcher

log = get_logger("llmd_kvmanager")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM/SIGINT for both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Server:
    """gRPC + HTTP around a `KVManager`; `start`, then `stop`."""

    def __init__(self, config: KVManagerConfig, manager: KVManager | None = None) -> None:
        self.config = config
        self.manager = manager or KVManager(config)
        self.grpc: grpc.aio.Server | None = None
        self.http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._watch: asyncio.Task[None] | None = None
        self.pool: PoolWatcher | None = None

    async def start(self) -> None:
        cfg = self.config
        await self.manager.start()
        # Everything built so far (the index's containers above all) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which would otherwise walk
        # every block of the in-memory index (~50 ms per million blocks).
        gc.collect()
        gc.freeze()
        self.grpc = grpc.aio.server()
        add_to_server(self.grpc, self.manager)
        HealthServicer(self.manager.health).add_to_server(self.grpc)
        self.grpc_port = self.grpc.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
        await self.grpc.start()
        self.http = _Uvicorn(
            uvicorn.Config(
                create_app(self.manager),
                host=cfg.host,
                port=cfg.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        self._http_task = asyncio.create_task(self.http.serve())
        while not self.http.started:
            if self._http_task.done():
                self._http_task.result()  # raises the bind error
                raise RuntimeError("HTTP server exited")
            await asyncio.sleep(0.01)
        self.http_port = self.http.servers[0].sockets[0].getsockname()[1]
        self._watch = asyncio.create_task(self._watch_backend())
        if cfg.pool.modelservice_url:
            self.pool = PoolWatcher(self.manager, cfg.pool.modelservice_url, cfg.pool.model)
            self.pool.start()
        log.info(
            "started",
            version=__version__,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            backend=cfg.backend.kind,
            bind=self.manager.subscriber.bound_address,
            engines=len(cfg.engines),
            models=[m.name for m in cfg.models],
        )

    async def _watch_backend(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            if not await self.manager.check_backend():
                log.warning("index backend not answering", backend=self.config.backend.kind)

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.pool is not None:
            await self.pool.stop()
        self.manager.health.shutdown()  # NOT_SERVING first, so balancers drain us
        if self.grpc is not None:
            await self.grpc.stop(grace)
        if self.http is not None and self._http_task is not None:
            self.http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http_task
        await self.manager.stop()
        log.info("stopped")


async def serve(config: KVManagerConfig) -> None:
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args:
        print(f"llmd-kvmanager {__version__}")
        return 0
    try:
        config = load_config(args)
    except SettingsError as exc:
        count = len(exc.lines)
        print(f"llmd-kvmanager: invalid settings ({count} problem{'s' if count != 1 else ''}):",
              file=sys.stderr)  # fmt: skip
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return 2
    configure_logging("kvmanager", config.log_level, json=config.log_json)
    try:
        asyncio.run(serve(config))
    except ValueError as exc:  # a model's tokenizer, a bad address found at start
        print(f"llmd-kvmanager: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llmd-kvmanager: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
