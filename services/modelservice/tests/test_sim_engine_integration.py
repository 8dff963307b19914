"""The supervisor with the real `llmd-sim` engine (kind `sim`, no command override).

Skipped until `llmd-sim` is installed in the workspace (the simulator lands on main separately);
the fake engine covers the same supervisor paths meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmd_modelservice.replica import ReplicaState

pytestmark = pytest.mark.integration


def _llmd_sim() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("llmd-sim", path=search)


@pytest.fixture
def sim_available() -> None:
    if _llmd_sim() is None:
        pytest.skip("llmd-sim is not installed here yet (services/vllm-sim is not on main)")


async def test_three_llmd_sim_replicas_serve_and_recover(
    sim_available: None,
    make_spec: Callable[..., Any],
    run_supervisor: Any,
    wait: Any,
) -> None:
    spec = make_spec(
        "sim3",
        model={"name": "Qwen/Qwen3-0.6B", "servedNames": ["qwen"]},
        replicas=3,
        engine={"kind": "sim"},
        local={"basePort": 0},
        health={"intervalSeconds": 0.2, "timeoutSeconds": 1, "startupTimeoutSeconds": 60},
        restart={"backoffInitialSeconds": 0.1},
    )
    sup = await run_supervisor(spec)
    runners = sup.replicas("sim3")
    await wait(lambda: all(r.state == ReplicaState.READY for r in runners), 60)
    async with httpx.AsyncClient(timeout=30) as client:
        for e in sup.registry.endpoints("sim3"):
            models = (await client.get(f"http://{e.endpoint}/v1/models")).json()
            assert "qwen" in [m["id"] for m in models["data"]]
            metrics = (await client.get(f"http://{e.endpoint}/metrics")).text
            assert "vllm:num_requests_running" in metrics
    victim = runners[0]
    pid = victim.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait(lambda: victim.restarts == 1 and victim.state == ReplicaState.READY, 60)
    assert len(sup.registry.endpoints("sim3")) == 3
