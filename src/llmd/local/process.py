"""What the supervisor runs: one `ProcessSpec` per component, and its running `Child`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx

_PR_SET_PDEATHSIG = 1


class Probe(Protocol):
    async def check(self, client: httpx.AsyncClient) -> str | None:
        """None when ready, else a short reason."""


@dataclass(slots=True)
class ProcessSpec:
    """A component of the stack as a command line, how to tell it is ready, how to stop it."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    address: str = ""
    probe: Probe | None = None
    # Components of one stage start together; a stage starts when the previous is ready.
    stage: int = 0
    # Stop order: lower first (the gateway first, the engines' supervisor last).
    stop_rank: int = 0
    stop_timeout_s: float = 10.0
    # Restart when it exits on its own after it was ready (up to `max_restarts` times).
    restart: bool = True
    max_restarts: int = 3
    # Tail `<dir>/*.log` into the stack's log as `<name>/<file stem>` (engine logs).
    log_dir: Path | None = None
    log_dir_prefix: str = ""


class State(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(slots=True, eq=False)
class Child:
    """A running (or finished) component: its process group, state and restart count."""

    spec: ProcessSpec
    state: State = State.PENDING
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    returncode: int | None = None
    reason: str = ""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: one killpg reaches its children
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            limit=1 << 20,
        )
        self.returncode = None
        return self.proc

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def terminate(self, timeout: float) -> int | None:
        """SIGTERM the group, SIGKILL it after `timeout`; reap stragglers in the group."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                self.signal_group(signal.SIGKILL)
                await proc.wait()
        self.signal_group(signal.SIGKILL)
        self.returncode = proc.returncode
        return proc.returncode
