"""`llmd up [config.yaml]`: run the local stack until Ctrl-C (`make up`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("examples/local.yaml")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole stack on this machine (dev gateway on 127.0.0.1:8000)",
        description="Start kvmanager, modelservice (and its engines), BBR, one EPP per model "
        "and the dev gateway as supervised local processes; stop them all on Ctrl-C.",
    )
    p.add_argument(
        "config", nargs="?", type=Path, default=DEFAULT_CONFIG, help="stack YAML (%(default)s)"
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="console lines, or JSON lines with a `component` field (auto: console on a tty)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--run-dir", type=Path, help="where the generated files go (default: a tmp dir)")
    p.add_argument(
        "--no-check", action="store_true", help="skip the first request through the gateway"
    )
    p.set_defaults(handler=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"llmd up: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from llmd.local.config import ConfigError, load_config
    from llmd.local.logs import LogSink

    config_path: Path = args.config
    if not config_path.exists() and config_path == DEFAULT_CONFIG:
        # `llmd up` from outside the repository: the example next to this checkout.
        candidate = Path(__file__).resolve().parents[3] / DEFAULT_CONFIG
        if candidate.exists():
            config_path = candidate
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    if args.log_level:
        cfg = cfg.model_copy(update={"log_level": args.log_level})
    fmt = args.log_format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    sink = LogSink(sys.stderr, fmt=fmt, level=cfg.log_level)
    try:
        return asyncio.run(_up(cfg, sink, args, str(config_path)))
    except KeyboardInterrupt:
        return 130


async def _up(cfg: Any, sink: Any, args: argparse.Namespace, source: str) -> int:
    from llmd.local.config import ConfigError
    from llmd.local.ports import PortInUseError
    from llmd.local.stack import LocalStack
    from llmd.local.supervisor import StartError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    stack = LocalStack(
        cfg, sink=sink, run_dir=args.run_dir, source=source, self_check=not args.no_check
    )
    starting = asyncio.create_task(stack.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # Ctrl-C while starting: stop what is up, in order
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await stack.stop()
        return _fail("interrupted while starting; everything is stopped", 130)
    try:
        starting.result()
    except (StartError, PortInUseError) as exc:
        stopper.cancel()
        return _fail(str(exc))
    except ConfigError as exc:  # a plan that cannot be built from this config
        stopper.cancel()
        return _fail(str(exc), 2)

    print(stack.table(), flush=True)
    print(f"\nTry it:\n  {stack.curl()}\n\nCtrl-C stops everything.", flush=True)
    assert stack.supervisor is not None
    failed = asyncio.create_task(stack.supervisor.failed.wait())
    await asyncio.wait({stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
    failure = stack.supervisor.failure if failed.done() else ""
    for task in (stopper, failed):
        task.cancel()
    sink.log("llmd", "info", "stopping", reason=received[0] if received else failure)
    await stack.stop()
    left = stack.open_ports()
    if left:
        return _fail("still listening after stop: " + ", ".join(f"{f}={p}" for f, p in left))
    sink.log("llmd", "info", "all stopped")
    if failure:
        return _fail(failure)
    return 0
