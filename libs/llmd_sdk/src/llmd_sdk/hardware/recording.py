"""Record a machine as the detectors see it, and replay it.

`python -m llmd_sdk.hardware --record DIR` runs detection through a `RecordingView` that notes
every file, directory listing, environment variable and command the detectors touched, then
writes them as a fixture tree:

    DIR/root/...        the files read and the directory entries listed (/sys, /proc, /dev)
    DIR/system.json     {"hostname", "machine", "env": {only the variables looked up}}
    DIR/commands.json   [{"argv", "returncode", "stdout", "stderr"}]; programs that were not
                        installed are left out, so replay finds them missing too
    DIR/nvml.json       the NVML snapshot (`nvidia.query_nvml`), or {"error": "..."}

`SystemView.recorded(DIR)` replays it; detection on the replay gives the same profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmd_sdk.hardware.probe import describe_error
from llmd_sdk.hardware.profile import HardwareProfile
from llmd_sdk.hardware.system import (
    CommandResult,
    NVMLApi,
    RecordedCommands,
    SystemView,
    read_json,
)


class RecordedNVMLError(Exception):
    """An NVML failure as recorded (the message of the live error)."""


class ReplayNVML:
    """A pynvml-shaped object answering from an NVML snapshot (see `nvidia.query_nvml`).
    Handles are device indexes; a query recorded as failed raises `RecordedNVMLError`."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot
        self._devices: list[dict[str, Any]] = list(snapshot.get("devices", []))

    def _field(self, handle: int, key: str) -> Any:
        device = self._devices[handle]
        value = device.get(key)
        if value is None:
            raise RecordedNVMLError(device.get("errors", {}).get(key, "Not Supported"))
        return value

    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        version = self._snapshot.get("driver_version")
        if version is None:
            raise RecordedNVMLError(self._snapshot.get("driver_error", "Not Supported"))
        return str(version)

    def nvmlDeviceGetCount(self) -> int:
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self._devices):
            raise RecordedNVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._field(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        memory = self._field(handle, "memory")
        return _Struct(
            total=memory["total"], free=memory["free"], used=memory["total"] - memory["free"]
        )

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        return _Struct(busId=self._field(handle, "pci_bus_id"))

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        major, minor = self._field(handle, "cuda_compute_capability")
        return int(major), int(minor)

    def nvmlDeviceGetNumaNodeId(self, handle: int) -> int:
        return int(self._field(handle, "numa_node"))


class _Struct:
    """Attribute bag standing in for an NVML ctypes struct."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def load_recorded_view(path: Path) -> SystemView:
    """The `SystemView` of a recorded fixture tree."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no recorded machine here")
    system = read_json(path / "system.json") if (path / "system.json").exists() else {}
    commands = read_json(path / "commands.json") if (path / "commands.json").exists() else []
    nvml_file = path / "nvml.json"

    def load_nvml() -> NVMLApi:
        if not nvml_file.exists():
            raise RecordedNVMLError("NVML not recorded")
        snapshot = read_json(nvml_file)
        if "error" in snapshot:
            raise RecordedNVMLError(snapshot["error"])
        return ReplayNVML(snapshot)

    return SystemView(
        root=path / "root",
        env=dict(system.get("env", {})),
        run=RecordedCommands(commands),
        nvml=load_nvml,
        hostname=str(system.get("hostname", "recorded")),
        machine=str(system.get("machine", "x86_64")),
    )


@dataclass
class Recorder:
    """What a `RecordingView` saw."""

    files: dict[str, str] = field(default_factory=dict)
    # directory -> {entry name: "dir" | "file"}
    entries: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RecordingView(SystemView):
    """A `SystemView` that notes what it was asked, for `write_recording`."""

    recorder: Recorder = field(default_factory=Recorder)

    def read_text(self, machine_path: str) -> str | None:
        text = super().read_text(machine_path)
        if text is not None:
            self.recorder.files[machine_path] = text
        return text

    def exists(self, machine_path: str) -> bool:
        found = super().exists(machine_path)
        if found:
            self._note_entry(machine_path)
        return found

    def is_dir(self, machine_path: str) -> bool:
        found = super().is_dir(machine_path)
        if found:
            self._note_entry(machine_path)
        return found

    def list_dir(self, machine_path: str, pattern: str = r".*") -> list[str]:
        names = super().list_dir(machine_path, pattern)
        listed = self.recorder.entries.setdefault(machine_path.rstrip("/") or "/", {})
        for name in names:
            listed[name] = "dir" if self.path(f"{machine_path}/{name}").is_dir() else "file"
        return names

    def getenv(self, name: str) -> str | None:
        value = super().getenv(name)
        if value is not None:
            self.recorder.env[name] = value
        return value

    def run_tool(self, argv: Sequence[str]) -> CommandResult:
        try:
            result = super().run_tool(argv)
        except FileNotFoundError:
            raise  # left out: replay reports the program as not installed
        except TimeoutError:
            self.recorder.commands.append({"argv": list(argv), "timed_out": True})
            raise
        self.recorder.commands.append(
            {
                "argv": list(argv),
                "returncode": result.returncode,
                "stdout": result.stdout,
                "stderr": result.stderr,
            }
        )
        return result

    def _note_entry(self, machine_path: str) -> None:
        parent, _, name = machine_path.rstrip("/").rpartition("/")
        if name:
            kind = "dir" if self.path(machine_path).is_dir() else "file"
            self.recorder.entries.setdefault(parent or "/", {})[name] = kind


def snapshot_nvml(load: Callable[[], NVMLApi]) -> dict[str, Any]:
    """The NVML snapshot to store, or {"error": why NVML could not be asked}."""
    from llmd_sdk.hardware.nvidia import query_nvml

    try:
        return query_nvml(load())
    except Exception as exc:
        return {"error": describe_error(exc)}


def record_machine(out: Path, base: SystemView | None = None) -> HardwareProfile:
    """Detect on `base` (this machine by default), write the fixture tree under `out`, and
    return the profile. When NVML found GPUs, nvidia-smi is run as well so the fixture can
    cross-check both sources."""
    from llmd_sdk.hardware.detection import detect
    from llmd_sdk.hardware.nvidia import probe_nvidia_smi

    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; record into a new directory")
    base = base or SystemView.live()
    view = RecordingView(
        root=base.root,
        env=base.env,
        run=base.run,
        nvml=base.nvml,
        hostname=base.hostname,
        machine=base.machine,
        command_timeout=base.command_timeout,
    )
    profile = detect(view)
    if profile.detection.get("nvidia") == "nvml":
        probe_nvidia_smi(view)
    write_recording(view, out)
    return profile


def write_recording(view: RecordingView, out: Path) -> None:
    """Write what `view` saw (after a `detect(view)`) as a fixture tree under `out`."""
    root = out / "root"
    root.mkdir(parents=True, exist_ok=True)
    for directory, listed in view.recorder.entries.items():
        for name, kind in listed.items():
            target = root / directory.lstrip("/") / name
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch(exist_ok=True)
    for machine_path, text in view.recorder.files.items():
        target = root / machine_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    # git keeps no empty directories; a placeholder keeps e.g. .../node/node0 in the fixture.
    for folder in sorted(root.rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            (folder / ".gitkeep").touch()
    system = {"hostname": view.hostname, "machine": view.machine, "env": view.recorder.env}
    (out / "system.json").write_text(json.dumps(system, indent=2) + "\n", encoding="utf-8")
    (out / "commands.json").write_text(
        json.dumps(view.recorder.commands, indent=2) + "\n", encoding="utf-8"
    )
    (out / "nvml.json").write_text(
        json.dumps(snapshot_nvml(view.nvml), indent=2) + "\n", encoding="utf-8"
    )
