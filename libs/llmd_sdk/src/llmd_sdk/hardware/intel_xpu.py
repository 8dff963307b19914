"""Intel data-center GPUs (XPU): `xpu-smi discovery --json` when installed, else sysfs.

sysfs finds DRM cards with vendor 0x8086, a render node, and the PCI device id of a
data-center part (Max series, Flex series); other Intel graphics (integrated, Arc) are not
counted as accelerators and the detection line says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmd_sdk.hardware.pci import (
    VENDOR_INTEL,
    drm_cards,
    normalize_bus_id,
    numa_node_by_bus_id,
    parse_hex,
    parse_int,
)
from llmd_sdk.hardware.probe import Probe, describe_error
from llmd_sdk.hardware.profile import AcceleratorDevice
from llmd_sdk.hardware.system import SystemView

XPU_SMI_LIST_ARGV = ["xpu-smi", "discovery", "--json"]


def xpu_smi_device_argv(device_id: int) -> list[str]:
    return ["xpu-smi", "discovery", "-d", str(device_id), "--json"]


@dataclass(frozen=True)
class _Part:
    name: str
    architecture: str  # the offline-compiler (ocloc) device name kernels are built for


# PCI device ids of the data-center parts (Linux i915 / compute-runtime device tables).
DATA_CENTER_PARTS: dict[int, _Part] = {
    0x0BD0: _Part("Intel(R) Data Center GPU Max", "pvc"),
    0x0BD5: _Part("Intel(R) Data Center GPU Max 1550", "pvc"),
    0x0BD6: _Part("Intel(R) Data Center GPU Max 1550", "pvc"),
    0x0BD7: _Part("Intel(R) Data Center GPU Max 1350", "pvc"),
    0x0BD8: _Part("Intel(R) Data Center GPU Max 1350", "pvc"),
    0x0BD9: _Part("Intel(R) Data Center GPU Max 1100", "pvc"),
    0x0BDA: _Part("Intel(R) Data Center GPU Max 1100", "pvc"),
    0x0BDB: _Part("Intel(R) Data Center GPU Max 1100", "pvc"),
    0x0B69: _Part("Intel(R) Data Center GPU Max 1450", "pvc"),
    0x56C0: _Part("Intel(R) Data Center GPU Flex 170", "ats-m150"),
    0x56C1: _Part("Intel(R) Data Center GPU Flex 140", "ats-m75"),
}


def detect_intel_sysfs(view: SystemView) -> tuple[list[AcceleratorDevice], list[str]]:
    """Data-center Intel GPUs from DRM sysfs; also returns notes about cards left out."""
    devices: list[AcceleratorDevice] = []
    ignored: list[str] = []
    for card in drm_cards(view, VENDOR_INTEL):
        part = DATA_CENTER_PARTS.get(card.pci.device or -1)
        if card.render_node is None or part is None:
            device = f"0x{card.pci.device:04x}" if card.pci.device is not None else "?"
            ignored.append(f"{card.name} ({device}) is not a data-center GPU")
            continue
        devices.append(
            AcceleratorDevice(
                kind="intel-xpu",
                index=len(devices),
                name=part.name,
                pci_bus_id=card.pci.bus_id,
                numa_node=card.pci.numa_node,
                architecture=part.architecture,
                driver_version=view.read_value("/sys/module/i915/version"),
            )
        )
    return devices, ignored


def _number(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_int(value)
    return None


def parse_xpu_smi_list(text: str) -> list[dict[str, Any]]:
    """Physical GPUs of `xpu-smi discovery --json`: {"device_list": [{"device_id",
    "device_name", "device_type", "pci_bdf_address", "pci_device_id", "uuid", ...}]}."""
    data = json.loads(text)
    entries = data.get("device_list", []) if isinstance(data, dict) else []
    return [
        e
        for e in entries
        if isinstance(e, dict)
        and str(e.get("device_type", "GPU")).upper() == "GPU"
        and str(e.get("device_function_type", "physical")).lower() != "virtual"
    ]


def _detail(view: SystemView, device_id: int) -> dict[str, Any]:
    """`xpu-smi discovery -d N --json` (memory size, driver); empty when it fails."""
    try:
        result = view.run_tool(xpu_smi_device_argv(device_id))
        data = json.loads(result.stdout) if result.returncode == 0 else {}
    except (OSError, TimeoutError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect_xpu_smi(view: SystemView) -> tuple[list[AcceleratorDevice], str]:
    try:
        result = view.run_tool(XPU_SMI_LIST_ARGV)
    except FileNotFoundError:
        return [], "xpu-smi: not installed"
    except (OSError, TimeoutError) as exc:
        return [], f"xpu-smi: {describe_error(exc)}"
    if result.returncode != 0:
        return [], f"xpu-smi: exit {result.returncode}"
    try:
        entries = parse_xpu_smi_list(result.stdout)
    except ValueError as exc:
        return [], f"xpu-smi: unreadable output ({describe_error(exc)})"
    devices = []
    for position, entry in enumerate(entries):
        device_id = _number(entry.get("device_id"))
        index = device_id if device_id is not None else position
        detail = {**entry, **_detail(view, index)}
        bus_id = normalize_bus_id(detail.get("pci_bdf_address"))
        part = DATA_CENTER_PARTS.get(parse_hex(str(detail.get("pci_device_id") or "")) or -1)
        devices.append(
            AcceleratorDevice(
                kind="intel-xpu",
                index=index,
                name=str(detail.get("device_name") or (part.name if part else "Intel GPU")),
                memory_total_bytes=_number(detail.get("memory_physical_size_byte")),
                memory_free_bytes=_number(detail.get("memory_free_size_byte")),
                uuid=detail.get("uuid") or None,
                pci_bus_id=bus_id,
                numa_node=numa_node_by_bus_id(view, bus_id),
                architecture=part.architecture if part else None,
                driver_version=detail.get("driver_version") or None,
            )
        )
    if not devices:
        return [], "xpu-smi: no GPUs listed"
    return devices, ""


def detect_intel_xpu(view: SystemView) -> Probe:
    """Intel data-center GPUs through xpu-smi, else sysfs."""
    devices, smi_reason = detect_xpu_smi(view)
    if devices:
        return Probe("xpu-smi", devices)
    devices, ignored = detect_intel_sysfs(view)
    if devices:
        return Probe(f"sysfs ({smi_reason})", devices)
    return Probe.absent(smi_reason, "sysfs: " + ("; ".join(ignored) or "no Intel DRM card"))
