"""Shared pieces of BBR's tests (conftest puts this directory on sys.path)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from llmd_bbr.server import BBRApp
from llmd_sdk.extproc import BodyMode, FilterConfig

MODELS = """
baseModels: [meta-llama/Llama-3.1-8B-Instruct]
adapters:
  meta-llama/Llama-3.1-8B-Instruct: [ski-resorts, movie-critique]
aliases:
  llama: meta-llama/Llama-3.1-8B-Instruct
  critic: {target: movie-critique, rewrite: true}
  modèle: {target: "modèle-✓-cible", rewrite: true}
"""


@dataclass(frozen=True)
class Mode:
    """An Envoy filter configuration under test."""

    name: str
    body_mode: BodyMode
    without_waiting: bool = False

    def filter(self, target: str, **kw: Any) -> FilterConfig:
        return FilterConfig(
            name="bbr",
            target=target,
            request_body_mode=self.body_mode,
            send_body_without_waiting_for_header_response=self.without_waiting,
            **kw,
        )


# The configurations in which BBR's headers reach the request (see the README).
ROUTABLE = [
    Mode("buffered", BodyMode.BUFFERED),
    Mode("streamed-without-waiting", BodyMode.STREAMED, True),
    Mode("full-duplex", BodyMode.FULL_DUPLEX_STREAMED),
]
PLAIN_STREAMED = Mode("streamed", BodyMode.STREAMED)


class LogSink:
    """Real structlog rendering (JSON lines) into a list."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.logger = structlog.wrap_logger(
            self,
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        )

    def msg(self, message: str) -> None:
        self.lines.append(message)

    debug = info = warning = error = critical = msg

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in self.lines]
        return [e for e in out if event is None or e["event"] == event]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition with a deadline (for state another task or process changes)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


def sample(app: BBRApp, name: str, **labels: str) -> float:
    value = app.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value
