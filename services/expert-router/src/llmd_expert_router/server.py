"""Wiring of the expert-router: settings, logging, the HTTP server, shutdown; ``main()``.

``llmd-expert-router [flags]`` serves the placement API (see ``http_api``).
``llmd-expert-router plan --load-file counts.json [flags] [--out plan.json]`` computes one plan
offline and prints its imbalance against a round-robin layout. Exit status 2 on bad settings
(one line per problem on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import structlog
import uvicorn
from llmd_sdk.settings import SettingsError, load_settings
from llmd_sdk.telemetry import configure_logging

from llmd_expert_router import __version__
from llmd_expert_router.config import PlanSettings, Settings
from llmd_expert_router.http_api import create_app, plan_json
from llmd_expert_router.placement import PlacementError
from llmd_expert_router.service import ExpertRouterService, read_load_file

log = structlog.get_logger("llmd_expert_router")


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
        log_config=None,  # uvicorn logs through configure_logging's handler
        access_log=False,
        lifespan="off",
    )
    server = _Server(config, on_exit=app.state.health.shutdown)
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


def plan_offline(settings: PlanSettings) -> dict[str, object]:
    """Plan once for ``settings.load_file``; return the summary, write the plan to ``out``."""
    if settings.load_file is None:
        raise PlacementError("load_file: required by `plan`")
    service = build_service(settings)
    service.report("file", read_load_file(settings.load_file))
    decision = asyncio.run(service.rebalance(force=True))
    assert decision.plan is not None
    if settings.out is not None:
        settings.out.write_text(json.dumps(plan_json(decision.plan)))
    return decision.to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args:
        print(__version__)
        return 0
    offline = bool(args) and args[0] == "plan"
    prog = "llmd-expert-router" + (" plan" if offline else "")
    try:
        if offline:
            plan_settings = load_settings(PlanSettings, args[1:], prog=prog)
            configure_logging("expert-router", plan_settings.log_level, json=False)
            print(json.dumps(plan_offline(plan_settings)))
            return 0
        settings = load_settings(Settings, args, prog=prog)
        settings.topology()  # cross-field check before anything starts
        configure_logging("expert-router", settings.log_level, json=settings.log_format == "json")
        asyncio.run(serve(settings))
    except SettingsError as exc:
        for line in exc.lines:
            print(f"{prog}: {line}", file=sys.stderr)
        return 2
    except PlacementError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
