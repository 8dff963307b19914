"""One local stack for the whole e2e session, started from `tests/e2e/stack.yaml` on free ports.

The stack runs on its own event loop in a background thread, so the tests are plain synchronous
functions driving it over HTTP, as a user would.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from e2e_helpers import RunningStack  # noqa: E402

from llmd.local import LocalStack, LogSink, load_config  # noqa: E402

# What the stack runs; a workspace without one of them cannot run the e2e suite.
SERVICES = (
    "llmd_sim.server",
    "llmd_bbr.server",
    "llmd_epp.server",
    "llmd_kvmanager.server",
    "llmd_modelservice.server",
)


def _missing_services() -> list[str]:
    missing = []
    for module in SERVICES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module.split(".")[0])
    return missing


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    missing = _missing_services()
    if missing:
        pytest.skip(f"the workspace lacks {', '.join(missing)}: the e2e stack cannot run")
    cfg = load_config(HERE / "stack.yaml").with_free_ports()
    level = os.environ.get("LLMD_E2E_LOG_LEVEL", "warning")
    sink = LogSink(sys.stderr, fmt="console", level=level)
    running = RunningStack(LocalStack(cfg, sink=sink, source="tests/e2e/stack.yaml"))
    try:
        running.call(running.stack.start(), timeout=cfg.startup_timeout_s + 60)
    except BaseException:
        running.loop.call_soon_threadsafe(running.loop.stop)
        raise
    try:
        yield running
    finally:
        running.close()
        left = running.stack.open_ports()
        assert not left, f"still listening after the stack stopped: {left}"


@pytest.fixture()
def client(stack: RunningStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        yield c
