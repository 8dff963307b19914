"""``llmd-kvmanager``: the global KV-cache index service.

Wiring only: configuration, logging, the `KVManager`, gRPC ``KVIndex`` on 9010 and HTTP
(health, metrics, pool membership) on 9011. SIGTERM/SIGINT stop it gracefully: no new requests,
in-flight ones finish, ingestion stops, the backend connection closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import uvicorn
from llmd_sdk.telemetry import configure_logging, get_logger

from llmd_kvmanager import __version__
from llmd_kvmanager.config import ConfigError, KVManagerConfig, load_config
from llmd_kvmanager.grpc_api import add_to_server
from llmd_kvmanager.http_api import create_app
from llmd_kvmanager.manager import KVManager

log = get_logger("llmd_kvmanager")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llmd-kvmanager",
        description="Global KV-cache block index fed by vLLM KV events; prefix scores over gRPC.",
    )
    p.add_argument("--config", "-c", help="YAML configuration file (see the README)")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--grpc-port", type=int, help="KVIndex gRPC port (default 9010)")
    p.add_argument("--http-port", type=int, help="health and metrics port (default 9011)")
    p.add_argument("--bind", help="bind a SUB socket engines connect to, e.g. tcp://*:5557")
    p.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="ENDPOINT=ZMQ[,MODEL[,REPLAY]]",
        help="an engine whose publisher binds, e.g. 10.0.0.7:8000=tcp://10.0.0.7:5557 (repeat)",
    )
    p.add_argument("--backend", choices=["memory", "redis"], help="index backend")
    p.add_argument("--redis-url", help="redis://host:port/db for the redis backend")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--version", action="version", version=f"llmd-kvmanager {__version__}")
    return p.parse_args(argv)


def _engine_flag(raw: str) -> dict[str, Any]:
    endpoint, sep, rest = raw.partition("=")
    if not sep:
        raise ConfigError(f"--engine: {raw!r} is not ENDPOINT=ZMQ[,MODEL[,REPLAY]]")
    parts = rest.split(",")
    out: dict[str, Any] = {"endpoint": endpoint, "zmq": parts[0]}
    if len(parts) > 1 and parts[1]:
        out["model"] = parts[1]
    if len(parts) > 2 and parts[2]:
        out["replay"] = parts[2]
    return out


def build_config(args: argparse.Namespace) -> KVManagerConfig:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("host", "host"),
        ("grpc_port", "grpc_port"),
        ("http_port", "http_port"),
        ("bind", "ingest.bind"),
        ("backend", "backend.kind"),
        ("redis_url", "backend.redis_url"),
        ("log_level", "log_level"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    cfg = load_config(args.config, overrides)
    if args.engine:
        extra = [_engine_flag(e) for e in args.engine]
        data = cfg.model_dump()
        data["engines"] = data["engines"] + extra
        from llmd_kvmanager.config import parse_config

        cfg = parse_config(data)
    return cfg


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

    async def stop(self, grace: float = 5.0) -> None:
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
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"llmd-kvmanager: {exc}", file=sys.stderr)
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
