"""NVIDIA GPUs: NVML through nvidia-ml-py (`pynvml`), else `nvidia-smi --query-gpu` CSV.

NVML answers are first taken into a plain snapshot (`query_nvml`), then turned into devices
(`devices_from_nvml`): the snapshot is what `--record` stores, so a recorded machine replays
through the same conversion.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable
from typing import Any

from llmd_sdk.hardware.pci import normalize_bus_id, numa_node_by_bus_id
from llmd_sdk.hardware.probe import Probe, describe_error
from llmd_sdk.hardware.profile import AcceleratorDevice
from llmd_sdk.hardware.system import NVMLApi, SystemView

MIB = 1024 * 1024

# nvidia-smi --help-query-gpu names; compute_cap needs a driver from 2022 or later, so a
# refused query is retried without it.
SMI_FIELDS = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "memory.total",
    "memory.free",
    "driver_version",
    "compute_cap",
)
SMI_FIELDS_LEGACY = SMI_FIELDS[:-1]
_SMI_NOT_AVAILABLE = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]"}


def smi_argv(fields: tuple[str, ...] = SMI_FIELDS) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def query_nvml(api: NVMLApi) -> dict[str, Any]:
    """Ask NVML everything the profile needs, as a JSON-able snapshot. Raises when NVML cannot
    start or count devices; a single query that fails is recorded under the device's "errors"."""
    api.nvmlInit()
    try:
        snapshot: dict[str, Any] = {"driver_version": None, "devices": []}
        try:
            snapshot["driver_version"] = _text(api.nvmlSystemGetDriverVersion())
        except Exception as exc:
            snapshot["driver_error"] = describe_error(exc)
        queries: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
            "name": (api.nvmlDeviceGetName, _text),
            "uuid": (api.nvmlDeviceGetUUID, _text),
            "pci_bus_id": (api.nvmlDeviceGetPciInfo, lambda info: _text(info.busId)),
            "memory": (api.nvmlDeviceGetMemoryInfo, _memory),
            "cuda_compute_capability": (
                api.nvmlDeviceGetCudaComputeCapability,
                lambda cc: [int(cc[0]), int(cc[1])],
            ),
            # Older nvidia-ml-py releases lack this call: the lookup fails inside the try.
            "numa_node": (lambda h: api.nvmlDeviceGetNumaNodeId(h), int),
        }
        for index in range(int(api.nvmlDeviceGetCount())):
            handle = api.nvmlDeviceGetHandleByIndex(index)
            device: dict[str, Any] = {"index": index}
            errors: dict[str, str] = {}
            for key, (query, convert) in queries.items():
                try:
                    device[key] = convert(query(handle))
                except Exception as exc:
                    device[key] = None
                    errors[key] = describe_error(exc)
            if errors:
                device["errors"] = errors
            snapshot["devices"].append(device)
        return snapshot
    finally:
        with contextlib.suppress(Exception):  # a failed shutdown of a read-only session
            api.nvmlShutdown()


def _memory(info: Any) -> dict[str, int]:
    return {"total": int(info.total), "free": int(info.free)}


def devices_from_nvml(view: SystemView, snapshot: dict[str, Any]) -> list[AcceleratorDevice]:
    driver = snapshot.get("driver_version")
    devices = []
    for raw in snapshot.get("devices", []):
        bus_id = normalize_bus_id(raw.get("pci_bus_id"))
        memory = raw.get("memory") or {}
        capability = raw.get("cuda_compute_capability")
        numa = raw.get("numa_node")
        if not isinstance(numa, int) or numa < 0:
            numa = numa_node_by_bus_id(view, bus_id)
        devices.append(
            AcceleratorDevice(
                kind="nvidia",
                index=int(raw["index"]),
                name=raw.get("name") or "NVIDIA GPU",
                memory_total_bytes=memory.get("total"),
                memory_free_bytes=memory.get("free"),
                uuid=raw.get("uuid"),
                pci_bus_id=bus_id,
                numa_node=numa,
                architecture=f"{capability[0]}.{capability[1]}" if capability else None,
                driver_version=driver,
            )
        )
    return devices


def _smi_value(text: str) -> str | None:
    text = text.strip()
    return None if text.lower() in _SMI_NOT_AVAILABLE else text


def _smi_mib(text: str) -> int | None:
    value = _smi_value(text)
    if value is None:
        return None
    try:
        return int(float(value) * MIB)
    except ValueError:
        return None


def parse_nvidia_smi(
    view: SystemView, stdout: str, fields: tuple[str, ...] = SMI_FIELDS
) -> list[AcceleratorDevice]:
    """Parse `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` output (one GPU a
    line, values separated by ", ", memory in MiB). Malformed lines are skipped."""
    devices = []
    for row in csv.reader(io.StringIO(stdout), skipinitialspace=True):
        if len(row) != len(fields):
            continue
        values = dict(zip(fields, row, strict=True))
        index_text = _smi_value(values["index"])
        if index_text is None or not index_text.isdigit():
            continue
        bus_id = normalize_bus_id(_smi_value(values["pci.bus_id"]))
        devices.append(
            AcceleratorDevice(
                kind="nvidia",
                index=int(index_text),
                name=_smi_value(values["name"]) or "NVIDIA GPU",
                memory_total_bytes=_smi_mib(values["memory.total"]),
                memory_free_bytes=_smi_mib(values["memory.free"]),
                uuid=_smi_value(values["uuid"]),
                pci_bus_id=bus_id,
                numa_node=numa_node_by_bus_id(view, bus_id),
                architecture=_smi_value(values.get("compute_cap", "")),
                driver_version=_smi_value(values["driver_version"]),
            )
        )
    return devices


def _first_line(result_text: str) -> str:
    for line in result_text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def probe_nvidia_smi(view: SystemView) -> tuple[list[AcceleratorDevice], str]:
    """Run nvidia-smi; returns the devices and, when there are none, why."""
    for fields in (SMI_FIELDS, SMI_FIELDS_LEGACY):
        try:
            result = view.run_tool(smi_argv(fields))
        except FileNotFoundError:
            return [], "nvidia-smi: not installed"
        except (OSError, TimeoutError) as exc:
            return [], f"nvidia-smi: {describe_error(exc)}"
        output = result.stdout + "\n" + result.stderr
        if result.returncode != 0:
            if fields is SMI_FIELDS and "compute_cap" in output:
                continue  # an older driver that does not know the field
            return [], f"nvidia-smi: exit {result.returncode}: {_first_line(output)}"
        devices = parse_nvidia_smi(view, result.stdout, fields)
        if devices:
            return devices, ""
        return [], f"nvidia-smi: no GPUs listed ({_first_line(output) or 'empty output'})"
    return [], "nvidia-smi: query refused"


def detect_nvidia(view: SystemView) -> Probe:
    """NVIDIA GPUs through NVML, falling back to nvidia-smi when NVML fails."""
    try:
        snapshot = query_nvml(view.nvml())
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        nvml_reason = f"nvml: {describe_error(exc)}"
    else:
        devices = devices_from_nvml(view, snapshot)
        if devices:
            return Probe("nvml", devices)
        nvml_reason = "nvml: no devices"
    devices, smi_reason = probe_nvidia_smi(view)
    if devices:
        return Probe(f"nvidia-smi ({nvml_reason})", devices)
    return Probe.absent(nvml_reason, smi_reason)
