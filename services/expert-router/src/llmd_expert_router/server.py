"""Wiring of the expert-router: settings, logging, the HTTP server, shutdown; ``main()``.

``llmd-expert-router [flags]`` serves the placement API (see ``http_api``).
``llmd-expert-router plan --load-file counts.json [flags] [--out plan.json]`` computes one plan
offline and prints its imbalance against a round-robin layout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from llmd_expert_router import __version__
from llmd_expert_router.config import ConfigError, Settings, add_arguments, load_settings
from llmd_expert_router.http_api import create_app, plan_json
from llmd_expert_router.placement import PlacementError
from llmd_expert_router.service import ExpertRouterService, read_load_file

log = structlog.get_logger("llmd_expert_router")


def configure_logging(level: str, fmt: str) -> None:
    """structlog to stderr, JSON lines (or console) at ``level``."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def build_service(settings: Settings) -> ExpertRouterService:
    service = ExpertRouterService(
        settings.topology(),
        window_s=settings.window_s,
        min_improvement=settings.min_improvement,
        history_size=settings.history_size,
        policy=settings.policy,
    )
    return service


class _Server(uvicorn.Server):
    """uvicorn's server with readiness dropped on the first SIGTERM/SIGINT.

    uvicorn re-raises a captured signal after shutdown (so the process dies by it); we record
    none, so a signalled shutdown that drains cleanly exits with status 0.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(sig).name)
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: readiness drops, the server drains, rounds stop."""
    service = build_service(settings)
    if settings.load_file is not None:
        service.load_file(settings.load_file)
        await service.rebalance()
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="off",
    )
    server = _Server(config, on_exit=lambda: setattr(app.state, "shutting_down", True))
    periodic = None
    if settings.rebalance_interval_s > 0:
        periodic = asyncio.create_task(service.run_periodic(settings.rebalance_interval_s))
    log.info(
        "starting",
        version=__version__,
        host=settings.host,
        port=settings.port,
        topology=service.topology.to_dict(),
    )
    try:
        await server.serve()
    finally:
        if periodic is not None:
            periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await periodic
        log.info("stopped")


def plan_offline(settings: Settings, out: Path | None) -> dict[str, object]:
    """Plan once for ``settings.load_file``; return the summary, write the plan to ``out``."""
    if settings.load_file is None:
        raise ConfigError("load_file: required by `plan`")
    service = build_service(settings)
    service.report("file", read_load_file(settings.load_file))
    decision = asyncio.run(service.rebalance(force=True))
    assert decision.plan is not None
    summary = decision.to_dict()
    if out is not None:
        out.write_text(json.dumps(plan_json(decision.plan)))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    offline = bool(args) and args[0] == "plan"
    parser = argparse.ArgumentParser(
        prog="llmd-expert-router" + (" plan" if offline else ""),
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_arguments(parser)
    if offline:
        parser.add_argument("--out", type=Path, default=None, help="write the plan JSON here")
    parser.add_argument("--version", action="version", version=__version__)
    ns = parser.parse_args(args[1:] if offline else args)
    try:
        settings = load_settings(ns)
        configure_logging(settings.log_level, settings.log_format)
        if offline:
            print(json.dumps(plan_offline(settings, ns.out)))
            return 0
        asyncio.run(serve(settings))
    except (ConfigError, PlacementError) as exc:
        print(f"llmd-expert-router: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
