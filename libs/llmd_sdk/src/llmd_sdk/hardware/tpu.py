"""Google TPUs: PCI functions of vendor 0x1ae0 in sysfs, else `/dev/accel*` or `/dev/vfio/*`
device nodes backed by the TPU environment (`TPU_ACCELERATOR_TYPE`, `TPU_CHIPS_PER_HOST_BOUNDS`,
as set on TPU VMs and GKE TPU nodes).

/dev/vfio is used by any passed-through PCI device, so device nodes alone do not make a TPU:
the environment has to say so. HBM sizes come from the chip's published specification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmd_sdk.hardware.pci import VENDOR_GOOGLE, PciDevice, pci_devices
from llmd_sdk.hardware.probe import Probe
from llmd_sdk.hardware.profile import AcceleratorDevice
from llmd_sdk.hardware.system import SystemView

GIB = 1024**3


@dataclass(frozen=True)
class TpuChip:
    generation: str  # "v5e"
    hbm_gib: int


V2 = TpuChip("v2", 8)
V3 = TpuChip("v3", 16)
V4 = TpuChip("v4", 32)
V5E = TpuChip("v5e", 16)
V5P = TpuChip("v5p", 95)
V6E = TpuChip("v6e", 32)
V7X = TpuChip("7x", 192)

# PCI device ids; v2 and v3 share 0x0027 and differ by subsystem id.
_PCI_CHIPS = {0x005E: V4, 0x0063: V5E, 0x0062: V5P, 0x006F: V6E, 0x0076: V7X}
_PCI_V2_V3 = {0x004E: V2, 0x004F: V3}

# TPU_ACCELERATOR_TYPE prefixes ("v5litepod-8", "v6e-16", "tpu7x-8", ...).
_TYPE_PREFIXES = (
    ("v5litepod", V5E),
    ("v5e", V5E),
    ("v5p", V5P),
    ("v6e", V6E),
    ("tpu7x", V7X),
    ("v7x", V7X),
    ("v4", V4),
    ("v3", V3),
    ("v2", V2),
)


def chip_from_pci(dev: PciDevice) -> TpuChip | None:
    if dev.device == 0x0027:
        return _PCI_V2_V3.get(dev.subsystem_device or -1)
    return _PCI_CHIPS.get(dev.device or -1)


def chip_from_accelerator_type(accelerator_type: str | None) -> TpuChip | None:
    if not accelerator_type:
        return None
    lowered = accelerator_type.strip().lower()
    for prefix, chip in _TYPE_PREFIXES:
        if lowered.startswith(prefix):
            return chip
    return None


def chips_per_host(bounds: str | None) -> int | None:
    """`TPU_CHIPS_PER_HOST_BOUNDS` "2,2,1" -> 4."""
    if not bounds:
        return None
    try:
        parts = [int(p) for p in bounds.split(",")]
    except ValueError:
        return None
    return math.prod(parts) if parts and all(p > 0 for p in parts) else None


def _device_nodes(view: SystemView) -> list[str]:
    accel = [f"/dev/{n}" for n in view.list_dir("/dev", r"accel\d+")]
    vfio = [f"/dev/vfio/{n}" for n in view.list_dir("/dev/vfio", r"\d+")]
    return accel or vfio


def _device(index: int, chip: TpuChip, dev: PciDevice | None) -> AcceleratorDevice:
    return AcceleratorDevice(
        kind="tpu",
        index=index,
        name=f"TPU {chip.generation}",
        memory_total_bytes=chip.hbm_gib * GIB,
        pci_bus_id=dev.bus_id if dev else None,
        numa_node=dev.numa_node if dev else None,
        architecture=chip.generation,
    )


def detect_tpu(view: SystemView) -> Probe:
    """TPU chips on this host."""
    accelerator_type = view.getenv("TPU_ACCELERATOR_TYPE")
    env_chip = chip_from_accelerator_type(accelerator_type)
    env_note = f"TPU_ACCELERATOR_TYPE={accelerator_type}" if accelerator_type else ""

    # A TPU is used through /dev/accelN (v2-v4) or /dev/vfio/N (v5e and later): without a
    # device node there is nothing to run on, and the PCI scan (every device's vendor file)
    # is skipped on the many hosts that have neither.
    nodes = _device_nodes(view)
    chips: dict[str, tuple[str, TpuChip, PciDevice]] = {}
    for dev in pci_devices(view, VENDOR_GOOGLE) if nodes else []:
        chip = chip_from_pci(dev)
        bus_id = dev.bus_id
        if chip is None or bus_id is None:
            continue
        # One chip can expose several PCI functions (cores): group by domain:bus:device.
        base = bus_id.rsplit(".", 1)[0]
        if base not in chips or bus_id < chips[base][0]:
            chips[base] = (bus_id, chip, dev)
    if chips:
        devices = [
            _device(i, chips[base][1], chips[base][2]) for i, base in enumerate(sorted(chips))
        ]
        return Probe("sysfs" + (f" ({env_note})" if env_note else ""), devices)

    if env_chip is not None and nodes:
        count = len(nodes)
        per_host = chips_per_host(view.getenv("TPU_CHIPS_PER_HOST_BOUNDS"))
        if per_host is not None and per_host < count:
            count = per_host  # other vfio groups (passed-through NICs, ...) are not chips
        elif per_host is not None and per_host > count:
            env_note += f", TPU_CHIPS_PER_HOST_BOUNDS says {per_host} chips"
        devices = [_device(i, env_chip, None) for i in range(count)]
        return Probe(f"env and /dev ({env_note}; {len(nodes)} device nodes)", devices)

    if env_chip is not None:
        return Probe.absent(f"{env_note} but no TPU device node under /dev")
    if accelerator_type:
        return Probe.absent(f"unknown {env_note}")
    if nodes:
        return Probe.absent(f"{', '.join(nodes[:3])} present but no TPU PCI device or env")
    return Probe.absent("no /dev/accel* or /dev/vfio/* device node")
