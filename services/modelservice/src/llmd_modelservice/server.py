"""`llmd-modelservice`: serve (local supervisor + API), plan, render, crd, validate, reconcile.

Exit codes: 0 success, 1 runtime failure, 2 invalid input (spec, hardware file, flags),
3 the spec does not fit this node (devices, memory, engine not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import yaml
from llmd_sdk.settings import format_validation_error
from llmd_sdk.telemetry import configure_logging as telemetry_logging
from pydantic import ValidationError

from llmd_modelservice import __version__
from llmd_modelservice.config import ReconcileSettings, ServeSettings
from llmd_modelservice.crd import crd
from llmd_modelservice.hardware import HardwareError, load_profile
from llmd_modelservice.planner import PlanError, plan_specs
from llmd_modelservice.render import render, to_yaml, write_base
from llmd_modelservice.spec import ModelService
from llmd_modelservice.validation import SpecError, load_specs

if TYPE_CHECKING:
    from llmd_modelservice.supervisor import Supervisor

EXIT_RUNTIME, EXIT_INPUT, EXIT_PLAN = 1, 2, 3
ACCELERATORS = ("nvidia", "amd", "intel-xpu", "tpu", "cpu")

log = structlog.get_logger("llmd_modelservice")


def configure_logging(level: str, fmt: str) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    telemetry_logging("modelservice", level, json=use_json)


def _fail(code: int, message: str) -> int:
    print(f"llmd-modelservice: {message}", file=sys.stderr)
    return code


def _load(paths: Sequence[str]) -> list[ModelService]:
    return load_specs(paths)


# -- serve -------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def _serve(sup: Supervisor, sock: socket.socket, settings: ServeSettings) -> None:
    import uvicorn

    from llmd_modelservice.api import create_app

    app = create_app(sup, heartbeat_seconds=settings.watch_heartbeat_seconds)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    signals = 0

    def on_signal(signum: int, frame: Any) -> None:
        # uvicorn re-raises the signal that stopped it: the first is expected; a second one
        # while replicas drain means "now".
        nonlocal signals
        signals += 1
        if signals > 1:
            sup.kill_all_now()
            os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    await sup.start()
    host, port = sock.getsockname()[:2]
    log.info("modelservice serving", api=f"http://{host}:{port}", models=list(sup.models))
    try:
        await server.serve(sockets=[sock])
    finally:
        log.info("shutting down: draining replicas")
        await sup.shutdown(drain=settings.drain_on_shutdown)
        log.info("all replicas stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: the web stack is only needed to serve (plan/render/crd start faster).
    from llmd_modelservice.supervisor import Supervisor

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "hardware": args.hardware,
            "log_dir": args.log_dir,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }.items()
        if v is not None
    }
    settings = ServeSettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    specs = _load(args.specs)
    profile = load_profile(settings.hardware)
    sup = Supervisor(specs, profile, log_dir=settings.log_dir)
    notes = sup.check()
    for note in notes:
        log.info("plan", note=note)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        return _fail(
            EXIT_RUNTIME, f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        )
    atexit.register(sup.kill_all_now)
    asyncio.run(_serve(sup, sock, settings))
    return 0


# -- plan / render / crd / validate ------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    specs = _load(args.specs)
    profile = load_profile(args.hardware)
    plans, notes = plan_specs(specs, profile)
    if args.format == "json":
        out = {
            "hardware": {"hostname": profile.hostname, "accelerator": profile.accelerator},
            "notes": notes,
            "replicas": [
                {
                    "id": p.replica_id,
                    "model": p.model,
                    "role": p.role,
                    "endpoint": p.endpoint,
                    "devices": list(p.devices),
                    "argv": list(p.argv),
                    "env": p.env,
                }
                for p in plans
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"# node {profile.hostname}: {profile.accelerator}, {len(profile.devices)} device(s)")
    for note in notes:
        print(f"# {note}")
    for p in plans:
        print(f"# {p.replica_id} ({p.role}) -> {p.endpoint}")
        print(p.command_line())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    specs = _load(args.specs)
    objects = []
    for ms in specs:
        objects += render(ms, accelerator=args.accelerator, kvmanager_endpoint=args.kvmanager)
    if args.out_dir:
        for path in write_base(objects, Path(args.out_dir)):
            print(path)
    else:
        sys.stdout.write(to_yaml(objects))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(yaml.safe_dump(crd(), sort_keys=False, width=100))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    specs = _load(args.specs)
    for ms in specs:
        print(f"ok: {ms.metadata.namespace}/{ms.name} ({ms.spec.engine.kind})")
    return 0


# -- reconcile ---------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace) -> int:
    from llmd_modelservice.kube import KubeClient, load_api_client
    from llmd_modelservice.reconciler import Reconciler

    overrides = {
        k: v
        for k, v in {
            "namespace": args.namespace,
            "kubeconfig": args.kubeconfig,
            "resync_seconds": args.resync_seconds,
            "kvmanager_endpoint": args.kvmanager,
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
        }.items()
        if v is not None
    }
    settings = ReconcileSettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    try:
        api = load_api_client(str(settings.kubeconfig) if settings.kubeconfig else None)
    except Exception as exc:
        return _fail(EXIT_INPUT, f"no Kubernetes configuration: {exc}")
    rec = Reconciler(
        KubeClient(api),
        namespace=settings.namespace,
        field_manager=settings.field_manager,
        resync_seconds=settings.resync_seconds,
        kvmanager_endpoint=settings.kvmanager_endpoint,
    )
    if args.once:
        rec.sync_all()
        return 0
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        return _fail(
            EXIT_RUNTIME, f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        )
    asyncio.run(_reconcile_forever(rec, sock, settings))
    return 0


async def _reconcile_forever(rec: Any, sock: socket.socket, settings: ReconcileSettings) -> None:
    """The controller loop in a thread; /healthz, /readyz (after the first full sync) and
    /metrics on the main thread's event loop until SIGTERM/SIGINT."""
    import uvicorn
    from fastapi import FastAPI
    from llmd_sdk.health import HealthState, add_health_routes
    from llmd_sdk.telemetry import add_metrics_route

    health = HealthState()
    rec.on_synced = lambda: health.set_ready(True)
    app = FastAPI(title="llmd-modelservice reconciler", version=__version__)
    add_health_routes(app, health)
    add_metrics_route(app, rec.metrics.registry)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)  # uvicorn re-raises the signal it stopped on
    stop = threading.Event()
    worker = threading.Thread(target=rec.run, args=(stop,), daemon=True, name="reconciler")
    worker.start()
    log.info("reconciling ModelServices", namespace=settings.namespace or "(all)")
    try:
        await server.serve(sockets=[sock])
    finally:
        health.shutdown()
        stop.set()
        rec.api.interrupt()
        await asyncio.to_thread(worker.join, 10)


# -- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmd-modelservice",
        description="Plan, start, health-check and restart inference engines; render them "
        "for Kubernetes.",
    )
    p.add_argument("--version", action="version", version=f"llmd-modelservice {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="run the specs' replicas here, with the HTTP API")
    s.add_argument("specs", nargs="+", metavar="SPEC.yaml")
    s.add_argument("--host", help="API listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="API port (default 8090)")
    s.add_argument("--hardware", help="HardwareProfile JSON instead of detecting")
    s.add_argument("--log-dir", help="where engine logs go")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    s.add_argument("--log-format", choices=("auto", "console", "json"))
    s.set_defaults(handler=cmd_serve)

    s = sub.add_parser("plan", help="print each replica's command line for this hardware")
    s.add_argument("specs", nargs="+", metavar="SPEC.yaml")
    s.add_argument("--hardware", help="HardwareProfile JSON instead of detecting")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.set_defaults(handler=cmd_plan)

    s = sub.add_parser("render", help="print the Kubernetes objects for the specs")
    s.add_argument("specs", nargs="+", metavar="SPEC.yaml")
    s.add_argument("--accelerator", choices=ACCELERATORS, help="target hardware")
    s.add_argument("--kvmanager", help="KV-event endpoint in the cluster (tcp://host:port)")
    s.add_argument("--out-dir", help="write a Kustomize base (one file per object)")
    s.set_defaults(handler=cmd_render)

    s = sub.add_parser("crd", help="print the ModelService CustomResourceDefinition")
    s.set_defaults(handler=cmd_crd)

    s = sub.add_parser("validate", help="check specs; list every error")
    s.add_argument("specs", nargs="+", metavar="SPEC.yaml")
    s.set_defaults(handler=cmd_validate)

    s = sub.add_parser("reconcile", help="run the Kubernetes controller for ModelServices")
    s.add_argument("--namespace")
    s.add_argument("--kubeconfig")
    s.add_argument("--resync-seconds", type=float)
    s.add_argument("--kvmanager", help="KV-event endpoint in the cluster (tcp://host:port)")
    s.add_argument("--once", action="store_true", help="reconcile everything once and exit")
    s.add_argument("--host", help="health/metrics listen address (default 0.0.0.0)")
    s.add_argument("--port", type=int, help="health/metrics port (default 8090)")
    s.set_defaults(handler=cmd_reconcile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except SpecError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INPUT
    except HardwareError as exc:
        return _fail(EXIT_INPUT, str(exc))
    except ValidationError as exc:  # settings from LLMD_MODELSERVICE_* or flags
        for line in format_validation_error(exc):
            print(f"llmd-modelservice: settings: {line}", file=sys.stderr)
        return EXIT_INPUT
    except PlanError as exc:
        return _fail(EXIT_PLAN, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
