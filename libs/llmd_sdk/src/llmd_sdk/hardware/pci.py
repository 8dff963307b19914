"""PCI facts read from sysfs, shared by the vendor detectors.

Bus ids are normalised to the sysfs spelling, `dddd:bb:dd.f` in lower case (NVML prints
`00000000:18:00.0`, amd-smi `0000:C1:00.0`), so devices from different tools join on one key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmd_sdk.hardware.system import SystemView

PCI_DEVICES = "/sys/bus/pci/devices"
DRM_CLASS = "/sys/class/drm"

VENDOR_NVIDIA = 0x10DE
VENDOR_AMD = 0x1002
VENDOR_INTEL = 0x8086
VENDOR_GOOGLE = 0x1AE0

_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])$"
)


def normalize_bus_id(bus_id: str | None) -> str | None:
    """`00000000:18:00.0` -> `0000:18:00.0`; None for anything that is not a PCI address."""
    if not bus_id:
        return None
    match = _BUS_ID.match(bus_id.strip())
    if match is None:
        return None
    domain = int(match["domain"] or "0", 16)
    return f"{domain:04x}:{int(match['bus'], 16):02x}:{int(match['dev'], 16):02x}.{match['fn']}"


def parse_hex(text: str | None) -> int | None:
    """`0x10de` or `10de` -> 0x10de; None when absent or malformed."""
    if not text:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs describes it."""

    path: str  # the sysfs directory, e.g. /sys/class/drm/card0/device
    bus_id: str | None
    vendor: int | None
    device: int | None
    subsystem_device: int | None
    numa_node: int | None


def read_pci_device(view: SystemView, device_dir: str) -> PciDevice:
    """Read a PCI device directory. The bus id comes from `uevent` (PCI_SLOT_NAME), which
    works through the sysfs symlinks and in recorded trees alike."""
    bus_id = None
    for line in (view.read_text(f"{device_dir}/uevent") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "PCI_SLOT_NAME":
            bus_id = normalize_bus_id(value)
    if bus_id is None:
        # /sys/bus/pci/devices/<bus id> is named for its address.
        bus_id = normalize_bus_id(device_dir.rstrip("/").rsplit("/", 1)[-1])
    return PciDevice(
        path=device_dir,
        bus_id=bus_id,
        vendor=parse_hex(view.read_value(f"{device_dir}/vendor")),
        device=parse_hex(view.read_value(f"{device_dir}/device")),
        subsystem_device=parse_hex(view.read_value(f"{device_dir}/subsystem_device")),
        numa_node=numa_node_of(view, device_dir),
    )


def numa_node_of(view: SystemView, device_dir: str) -> int | None:
    """The device's NUMA node; None when sysfs says -1 (no affinity) or does not say."""
    node = parse_int(view.read_value(f"{device_dir}/numa_node"))
    return node if node is not None and node >= 0 else None


def numa_node_by_bus_id(view: SystemView, bus_id: str | None) -> int | None:
    if bus_id is None:
        return None
    return numa_node_of(view, f"{PCI_DEVICES}/{bus_id}")


def pci_devices(view: SystemView, vendor: int) -> list[PciDevice]:
    """All PCI functions of one vendor under /sys/bus/pci/devices."""
    found = []
    for name in view.list_dir(PCI_DEVICES, r"[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+\.[0-7]"):
        device_dir = f"{PCI_DEVICES}/{name}"
        # Vendor first: the other files are read (and recorded) only for matching devices.
        if parse_hex(view.read_value(f"{device_dir}/vendor")) == vendor:
            found.append(read_pci_device(view, device_dir))
    return found


@dataclass(frozen=True)
class DrmCard:
    """A DRM card (`/sys/class/drm/cardN`) and its PCI device."""

    name: str  # card0
    pci: PciDevice
    render_node: str | None  # renderD128


def drm_cards(view: SystemView, vendor: int) -> list[DrmCard]:
    """DRM cards of one vendor, in card order. Connector entries (card0-DP-1) are skipped."""
    cards = []
    for name in view.list_dir(DRM_CLASS, r"card\d+"):
        device_dir = f"{DRM_CLASS}/{name}/device"
        if parse_hex(view.read_value(f"{device_dir}/vendor")) != vendor:
            continue
        pci = read_pci_device(view, device_dir)
        renders = view.list_dir(f"{device_dir}/drm", r"renderD\d+")
        cards.append(DrmCard(name=name, pci=pci, render_node=renders[0] if renders else None))
    return cards
