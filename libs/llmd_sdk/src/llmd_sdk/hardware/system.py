"""The system view: everything a hardware detector may look at, in one injectable object.

Detectors never touch `/sys`, `/proc`, `/dev`, the environment, subprocesses or NVML directly:
they go through a `SystemView`. `SystemView.live()` is this machine; `SystemView.recorded(dir)`
replays a machine captured with `python -m llmd_sdk.hardware --record DIR`, so the same code runs
in unit tests on fixture trees. Only the standard library is imported here.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

DEFAULT_COMMAND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str = ""


class CommandRunner(Protocol):
    """Runs a command. Raises `FileNotFoundError` when the program is not installed and
    `TimeoutError` when it runs past `timeout` seconds."""

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult: ...


class NVMLApi(Protocol):
    """The part of `pynvml` (nvidia-ml-py) the NVIDIA detector calls."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...
    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int: ...


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """The live `CommandRunner`: `subprocess.run` without a shell."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{argv[0]} ran past {timeout:g}s") from exc
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def load_pynvml() -> NVMLApi:
    """Import nvidia-ml-py lazily so the package imports on machines without it."""
    import pynvml

    return cast(NVMLApi, pynvml)


def natural_key(text: str) -> list[int | str]:
    """Sort key that puts card2 before card10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class SystemView:
    """A machine as the detectors see it: a root for /sys, /proc and /dev, an environment, a
    command runner, an NVML loader, and the host name and CPU architecture."""

    root: Path = Path("/")
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    run: CommandRunner = run_command
    nvml: Callable[[], NVMLApi] = load_pynvml
    hostname: str = field(default_factory=socket.gethostname)
    machine: str = field(default_factory=platform.machine)
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S

    @classmethod
    def live(cls) -> SystemView:
        """This machine."""
        return cls()

    @classmethod
    def recorded(cls, path: str | Path) -> SystemView:
        """A machine recorded by `python -m llmd_sdk.hardware --record DIR` (see `recording`)."""
        from llmd_sdk.hardware.recording import load_recorded_view

        return load_recorded_view(Path(path))

    # File access: paths are absolute machine paths ("/sys/class/drm") resolved under `root`.
    def path(self, machine_path: str) -> Path:
        return self.root / machine_path.lstrip("/")

    def read_text(self, machine_path: str) -> str | None:
        """The file's text, or None when it is missing or unreadable."""
        try:
            return self.path(machine_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def read_value(self, machine_path: str) -> str | None:
        """A one-value sysfs file, stripped; None when missing, unreadable or empty."""
        text = self.read_text(machine_path)
        if text is None:
            return None
        text = text.strip()
        return text or None

    def exists(self, machine_path: str) -> bool:
        return self.path(machine_path).exists()

    def is_dir(self, machine_path: str) -> bool:
        return self.path(machine_path).is_dir()

    def list_dir(self, machine_path: str, pattern: str = r".*") -> list[str]:
        """Entry names of a directory whose name fully matches `pattern`, naturally sorted;
        an empty list when the directory is missing."""
        regex = re.compile(pattern)
        try:
            names = [entry.name for entry in self.path(machine_path).iterdir()]
        except OSError:
            return []
        return sorted((n for n in names if regex.fullmatch(n)), key=natural_key)

    def getenv(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value else None

    def run_tool(self, argv: Sequence[str]) -> CommandResult:
        return self.run(argv, self.command_timeout)


class RecordedCommands:
    """A `CommandRunner` that answers from recorded results; unrecorded programs are "not
    installed" (FileNotFoundError), as on a machine without them."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._answers: dict[tuple[str, ...], Mapping[str, Any]] = {
            tuple(r["argv"]): r for r in records
        }

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        answer = self._answers.get(tuple(argv))
        if answer is None:
            raise FileNotFoundError(2, "not recorded", argv[0])
        if answer.get("timed_out"):
            raise TimeoutError(f"{argv[0]} ran past {timeout:g}s")
        return CommandResult(
            int(answer.get("returncode", 0)),
            str(answer.get("stdout", "")),
            str(answer.get("stderr", "")),
        )

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter(self._answers)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
