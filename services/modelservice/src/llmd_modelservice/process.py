"""Engine child processes: own process group, die with us, stopped TERM-then-KILL as a group.

Each engine starts in a new session so that one `killpg` reaches the workers it forks (vLLM
starts one per tensor-parallel rank). On Linux the child also gets `PR_SET_PDEATHSIG` so it is
killed if the supervisor dies without cleaning up (SIGKILL, OOM).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """Find the launcher: `python` is this interpreter; console scripts are looked up beside it
    first (the workspace venv's bin/) and then on PATH."""
    if not argv:
        raise FileNotFoundError("empty command")
    head, *rest = argv
    if head in ("python", "python3"):
        return [sys.executable, *rest]
    if os.sep in head:
        return [head, *rest]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(head, path=search)
    if found is None:
        raise FileNotFoundError(f"command {head!r} not found beside {sys.executable} or on PATH")
    return [found, *rest]


class EngineProcess:
    """One running engine, its log file and its process group."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> EngineProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env}
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *resolve_argv(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return cls(proc, log_path)

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM the group, SIGKILL it after `grace_s`; returns the exit code."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.signal_group(signal.SIGKILL)
                await self.proc.wait()
        # Workers the engine forked may outlive it in the group: reap them too.
        self.signal_group(signal.SIGKILL)
        rc = self.proc.returncode
        return rc if rc is not None else -1

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter shutdown)."""
        self.signal_group(signal.SIGKILL)

    def log_tail(self, lines: int = 5, max_chars: int = 400) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = " | ".join(s.strip() for s in text.strip().splitlines()[-lines:] if s.strip())
        return tail[-max_chars:]
