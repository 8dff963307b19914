from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bbr_helpers import MODELS, LogSink
from llmd_bbr.config import settings as bbr_settings
from llmd_bbr.server import BBRApp


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS)
    return path


@pytest.fixture
async def make_app(models_file: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start BBR in this process on free ports; every app is shut down after the test."""
    apps: list[BBRApp] = []

    async def make(serve_metrics: bool = False, **overrides: Any) -> tuple[BBRApp, LogSink]:
        sink = LogSink()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "health_port": 0,
            "metrics_port": 0,
            "models_config": models_file,
            "reload_interval": 0.02,
            **overrides,
        }
        settings = bbr_settings(**values)
        app = BBRApp(settings, log=sink.logger, serve_metrics=serve_metrics)
        await app.start()
        apps.append(app)
        return app, sink

    try:
        yield make
    finally:
        for app in apps:
            await app.shutdown(grace=0)


@pytest.fixture
async def bbr(make_app: Callable[..., Any]) -> tuple[BBRApp, LogSink]:
    app, sink = await make_app()
    return app, sink
