"""AMD: amd-smi JSON (both shapes), rocm-smi JSON, sysfs and the KFD topology."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from llmd_sdk.hardware.amd import (
    AMD_SMI_ARGV,
    ROCM_SMI_ARGV,
    detect_amd,
    gfx_name,
    parse_amd_smi,
    parse_rocm_smi,
)
from llmd_sdk.hardware.system import SystemView

ViewFactory = Callable[..., SystemView]
MIB = 2**20


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (90402, "gfx942"),
        (90010, "gfx90a"),
        (90008, "gfx908"),
        (110000, "gfx1100"),
        (100300, "gfx1030"),
        (120001, "gfx1201"),
        (0, None),
    ],
)
def test_kfd_target_version_to_gfx_name(version: int, name: str | None) -> None:
    assert gfx_name(version) == name


def test_amd_smi_list_shape_with_old_vram_key_and_na_values() -> None:
    text = json.dumps(
        [
            {
                "gpu": 0,
                "asic": {"market_name": "AMD Instinct MI250X", "target_graphics_version": "gfx90a"},
                "bus": {"bdf": "0000:C1:00.0"},
                "vram": {"vram_type": "HBM2E", "vram_size_mb": 65536},
                "driver": {"driver_name": "amdgpu", "driver_version": "6.3.6"},
            },
            {"gpu": 1, "asic": "N/A", "bus": {"bdf": "N/A"}, "vram": {"size": "N/A"}},
        ]
    )
    first, second = parse_amd_smi(text)
    assert first == {
        "index": 0,
        "name": "AMD Instinct MI250X",
        "bus_id": "0000:c1:00.0",
        "memory_total": 65536 * MIB,
        "architecture": "gfx90a",
        "driver_version": "6.3.6",
    }
    assert second["name"] is None and second["bus_id"] is None and second["memory_total"] is None


ROCM_SMI = {
    "card0": {
        "Card Series": "AMD Instinct MI300X",
        "Card Model": "0x74a1",
        "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
        "GFX Version": "gfx942",
        "PCI Bus": "0000:11:00.0",
        "VRAM Total Memory (B)": "206158430208",
        "VRAM Total Used Memory (B)": "283115520",
    },
    "card1": {
        "Card series": "Radeon RX 7900 XTX",  # older releases spell it in lower case
        "GFX Version": "gfx1100",
        "VRAM Total Memory (B)": "25753026560",
        "VRAM Total Used Memory (B)": "0",
    },
    "system": {"Driver version": "6.7.0"},
}


def test_rocm_smi_cards_in_order_and_the_system_block_ignored() -> None:
    first, second = parse_rocm_smi(json.dumps(ROCM_SMI))
    assert (first["name"], first["architecture"], first["bus_id"]) == (
        "AMD Instinct MI300X",
        "gfx942",
        "0000:11:00.0",
    )
    assert first["memory_free"] == 206158430208 - 283115520
    assert (second["index"], second["name"], second["bus_id"]) == (1, "Radeon RX 7900 XTX", None)


def _card(index: int, bdf: str, total: int, used: int) -> dict[str, str]:
    base = f"/sys/class/drm/card{index}/device"
    return {
        f"{base}/uevent": f"DRIVER=amdgpu\nPCI_SLOT_NAME={bdf}\n",
        f"{base}/vendor": "0x1002\n",
        f"{base}/device": "0x74a1\n",
        f"{base}/numa_node": f"{index}\n",
        f"{base}/mem_info_vram_total": f"{total}\n",
        f"{base}/mem_info_vram_used": f"{used}\n",
    }


def test_failed_amd_smi_falls_back_to_rocm_smi_joined_with_sysfs(make_view: ViewFactory) -> None:
    view = make_view(
        files=_card(0, "0000:11:00.0", 206158430208, 1024),
        commands=[
            {"argv": AMD_SMI_ARGV, "returncode": 1, "stderr": "AMDSMI_STATUS_INIT_ERROR\n"},
            {"argv": ROCM_SMI_ARGV, "returncode": 0, "stdout": json.dumps(ROCM_SMI)},
        ],
    )
    probe = detect_amd(view)
    assert probe.detection == "rocm-smi (amd-smi: exit 1: AMDSMI_STATUS_INIT_ERROR)"
    mi300, radeon = probe.devices
    assert mi300.numa_node == 0  # joined with sysfs on the bus id
    assert mi300.memory_free_bytes == 206158430208 - 283115520  # rocm-smi's own figure
    assert radeon.numa_node is None  # no bus id and no second sysfs card


def test_unreadable_tool_output_is_recorded_and_sysfs_used(make_view: ViewFactory) -> None:
    view = make_view(
        files=_card(0, "0000:11:00.0", 68702699520, 11096064),
        commands=[{"argv": AMD_SMI_ARGV, "returncode": 0, "stdout": "{not json"}],
    )
    probe = detect_amd(view)
    assert probe.detection.startswith("sysfs (amd-smi: unreadable output (")
    assert "rocm-smi: not installed" in probe.detection
    (gpu,) = probe.devices
    assert gpu.name == "AMD Instinct MI300X"  # from the device-id table
    assert gpu.memory_free_bytes == 68702699520 - 11096064
    assert gpu.architecture is None  # no KFD topology in this tree


def test_amd_display_card_without_vram_accounting_is_not_an_accelerator(
    make_view: ViewFactory,
) -> None:
    files = {
        "/sys/class/drm/card0/device/uevent": "PCI_SLOT_NAME=0000:05:00.0\n",
        "/sys/class/drm/card0/device/vendor": "0x1002\n",
    }
    probe = detect_amd(make_view(files=files))
    assert probe.devices == []
    assert probe.detection.endswith("sysfs: no amdgpu card with VRAM")
