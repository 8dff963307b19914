"""AMD GPUs: `amd-smi static --json`, else `rocm-smi --json`, else sysfs (amdgpu + KFD).

sysfs is always read as well: it gives the NUMA node and free VRAM, and the KFD topology gives
the gfx target ("gfx942") when the tools are missing. Devices join on the PCI bus id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llmd_sdk.hardware.pci import VENDOR_AMD, drm_cards, normalize_bus_id, parse_int
from llmd_sdk.hardware.probe import Probe, describe_error
from llmd_sdk.hardware.profile import AcceleratorDevice
from llmd_sdk.hardware.system import SystemView

MIB = 1024 * 1024
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"

AMD_SMI_ARGV = ["amd-smi", "static", "--asic", "--bus", "--vram", "--driver", "--json"]
ROCM_SMI_ARGV = ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showbus", "--json"]

# Names for the data-center parts, used only when neither a tool nor sysfs product_name names
# the card.
_DEVICE_NAMES = {
    0x74A1: "AMD Instinct MI300X",
    0x74A5: "AMD Instinct MI325X",
    0x740C: "AMD Instinct MI250X/MI250",
    0x740F: "AMD Instinct MI210",
    0x738C: "AMD Instinct MI100",
}
_GFX = re.compile(r"^gfx[0-9a-f]+$")


def gfx_name(target_version: int) -> str | None:
    """KFD `gfx_target_version` -> gfx name: major*10000 + minor*100 + stepping, the stepping
    written in hex (90402 -> gfx942, 90010 -> gfx90a, 110000 -> gfx1100)."""
    if target_version <= 0:
        return None
    major, rest = divmod(target_version, 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor}{stepping:x}"


@dataclass
class _SysfsCard:
    index: int
    bus_id: str | None
    device_id: int | None
    name: str | None
    memory_total: int | None
    memory_used: int | None
    numa_node: int | None
    uuid: str | None


def _kfd_architectures(view: SystemView) -> dict[str, str]:
    """PCI bus id -> gfx name, from the KFD topology (CPU nodes have gfx_target_version 0)."""
    found = {}
    for node in view.list_dir(KFD_NODES, r"\d+"):
        props: dict[str, int] = {}
        for line in (view.read_text(f"{KFD_NODES}/{node}/properties") or "").splitlines():
            key, _, value = line.strip().partition(" ")
            number = parse_int(value)
            if number is not None:
                props[key] = number
        arch = gfx_name(props.get("gfx_target_version", 0))
        location = props.get("location_id")
        if arch is None or location is None:
            continue
        # location_id packs bus:device.function as bus << 8 | device << 3 | function.
        bus_id = (
            f"{props.get('domain', 0):04x}:{location >> 8:02x}:"
            f"{(location >> 3) & 0x1F:02x}.{location & 0x7}"
        )
        found[bus_id] = arch
    return found


def _sysfs_cards(view: SystemView) -> list[_SysfsCard]:
    cards: list[_SysfsCard] = []
    for card in drm_cards(view, VENDOR_AMD):
        base = card.pci.path
        total = parse_int(view.read_value(f"{base}/mem_info_vram_total"))
        if total is None:
            continue  # not an amdgpu compute device (no VRAM accounting)
        cards.append(
            _SysfsCard(
                index=len(cards),
                bus_id=card.pci.bus_id,
                device_id=card.pci.device,
                name=view.read_value(f"{base}/product_name"),
                memory_total=total,
                memory_used=parse_int(view.read_value(f"{base}/mem_info_vram_used")),
                numa_node=card.pci.numa_node,
                uuid=view.read_value(f"{base}/unique_id"),
            )
        )
    return cards


def _free(total: int | None, used: int | None) -> int | None:
    if total is None or used is None:
        return None
    return max(total - used, 0)


def _fallback_name(device_id: int | None) -> str:
    if device_id is None:
        return "AMD GPU"
    return _DEVICE_NAMES.get(device_id, f"AMD GPU 0x{device_id:04x}")


def _na(value: Any) -> Any:
    """amd-smi writes "N/A" for what it could not read."""
    if isinstance(value, str) and value.strip().upper() in {"N/A", ""}:
        return None
    return value


def _size_bytes(value: Any) -> int | None:
    """amd-smi sizes: {"value": 196592, "unit": "MB"} (MB meaning MiB), a bare number of MiB,
    or "196592 MB"."""
    unit = "MB"
    if isinstance(value, dict):
        unit = str(value.get("unit") or "MB")
        value = value.get("value")
    value = _na(value)
    if isinstance(value, str):
        text, _, unit_text = value.strip().partition(" ")
        value, unit = text, unit_text or unit
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    scale = {"B": 1, "KB": 1024, "MB": MIB, "GB": 1024 * MIB}.get(unit.strip().upper())
    return int(number * scale) if scale else None


def _section(entry: dict[str, Any], key: str) -> dict[str, Any]:
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def parse_amd_smi(text: str) -> list[dict[str, Any]]:
    """Rows of `amd-smi static --asic --bus --vram --driver --json`: a list of per-GPU objects
    (older releases) or {"gpu_data": [...]} (newer ones)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    if not isinstance(data, list):
        raise ValueError("amd-smi: unexpected JSON shape")
    rows = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            continue
        asic, bus, vram, driver = (_section(entry, k) for k in ("asic", "bus", "vram", "driver"))
        gpu = entry.get("gpu")
        arch = _na(asic.get("target_graphics_version"))
        rows.append(
            {
                "index": gpu if isinstance(gpu, int) else position,
                "name": _na(asic.get("market_name")),
                "bus_id": normalize_bus_id(_na(bus.get("bdf"))),
                "memory_total": _size_bytes(vram.get("size", vram.get("vram_size_mb"))),
                "architecture": arch if isinstance(arch, str) and _GFX.match(arch) else None,
                "driver_version": _na(driver.get("version", driver.get("driver_version"))),
            }
        )
    return rows


def _ci_get(fields: dict[str, Any], *names: str) -> Any:
    """rocm-smi changed the capitalisation of its keys between releases ("Card series" /
    "Card Series"): look keys up case-insensitively."""
    lowered = {k.lower(): v for k, v in fields.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, "", "N/A"):
            return value
    return None


def parse_rocm_smi(text: str) -> list[dict[str, Any]]:
    """Rows of `rocm-smi --showproductname --showmeminfo vram --showbus --json`:
    {"card0": {"Card Series": ..., "GFX Version": ..., "VRAM Total Memory (B)": ...}, ...}."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("rocm-smi: unexpected JSON shape")
    rows = []
    for key in sorted(data, key=lambda k: (len(k), k)):
        fields = data[key]
        match = re.fullmatch(r"card(\d+)", key)
        if match is None or not isinstance(fields, dict):
            continue  # the "system" block
        total = parse_int(str(_ci_get(fields, "VRAM Total Memory (B)") or ""))
        used = parse_int(str(_ci_get(fields, "VRAM Total Used Memory (B)") or ""))
        arch = _ci_get(fields, "GFX Version")
        rows.append(
            {
                "index": int(match.group(1)),
                "name": _ci_get(fields, "Card Series", "Card Model", "Card SKU"),
                "bus_id": normalize_bus_id(_ci_get(fields, "PCI Bus")),
                "memory_total": total,
                "memory_free": _free(total, used),
                "architecture": arch if isinstance(arch, str) and _GFX.match(arch) else None,
            }
        )
    return rows


def _merge(
    view: SystemView, rows: list[dict[str, Any]], cards: list[_SysfsCard], archs: dict[str, str]
) -> list[AcceleratorDevice]:
    """Tool rows joined with sysfs cards on the bus id (by position when the tool gave none)."""
    by_bus: dict[str, _SysfsCard] = {c.bus_id: c for c in cards if c.bus_id}
    driver = view.read_value("/sys/module/amdgpu/version")
    devices = []
    for position, row in enumerate(rows):
        card = by_bus.get(row.get("bus_id") or "") or (
            cards[position] if not row.get("bus_id") and position < len(cards) else None
        )
        bus_id = row.get("bus_id") or (card.bus_id if card else None)
        total = row.get("memory_total") or (card.memory_total if card else None)
        free = row.get("memory_free")
        if free is None and card is not None:
            free = _free(card.memory_total, card.memory_used)
        devices.append(
            AcceleratorDevice(
                kind="amd",
                index=int(row["index"]),
                name=row.get("name")
                or (card.name if card else None)
                or _fallback_name(card.device_id if card else None),
                memory_total_bytes=total,
                memory_free_bytes=free,
                uuid=card.uuid if card else None,
                pci_bus_id=bus_id,
                numa_node=card.numa_node if card else None,
                architecture=row.get("architecture") or archs.get(bus_id or ""),
                driver_version=row.get("driver_version") or driver,
            )
        )
    return devices


def _run_json_tool(
    view: SystemView, argv: list[str], parse: Any
) -> tuple[list[dict[str, Any]] | None, str]:
    try:
        result = view.run_tool(argv)
    except FileNotFoundError:
        return None, f"{argv[0]}: not installed"
    except (OSError, TimeoutError) as exc:
        return None, f"{argv[0]}: {describe_error(exc)}"
    if result.returncode != 0:
        first = (result.stderr or result.stdout).strip().splitlines()
        return None, f"{argv[0]}: exit {result.returncode}: {first[0] if first else ''}".rstrip()
    try:
        rows: list[dict[str, Any]] = parse(result.stdout)
    except (ValueError, TypeError, AttributeError) as exc:
        return None, f"{argv[0]}: unreadable output ({describe_error(exc)})"
    if not rows:
        return None, f"{argv[0]}: no GPUs listed"
    return rows, ""


def detect_amd(view: SystemView) -> Probe:
    """AMD GPUs through amd-smi, rocm-smi or sysfs, in that order."""
    cards = _sysfs_cards(view)
    archs = _kfd_architectures(view)
    reasons: list[str] = []
    for argv, parse in ((AMD_SMI_ARGV, parse_amd_smi), (ROCM_SMI_ARGV, parse_rocm_smi)):
        rows, reason = _run_json_tool(view, argv, parse)
        if rows:
            detection = argv[0] if not reasons else f"{argv[0]} ({'; '.join(reasons)})"
            return Probe(detection, _merge(view, rows, cards, archs))
        reasons.append(reason)
    if cards:
        rows = [
            {"index": c.index, "bus_id": c.bus_id, "memory_total": c.memory_total} for c in cards
        ]
        return Probe(f"sysfs ({'; '.join(reasons)})", _merge(view, rows, cards, archs))
    return Probe.absent(*reasons, "sysfs: no amdgpu card with VRAM")
