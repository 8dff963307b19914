"""Intel XPU: xpu-smi discovery JSON and sysfs with the data-center device table."""

from __future__ import annotations

import json
from collections.abc import Callable

from llmd_sdk.hardware.intel_xpu import XPU_SMI_LIST_ARGV, detect_intel_xpu, xpu_smi_device_argv
from llmd_sdk.hardware.system import SystemView

ViewFactory = Callable[..., SystemView]

DISCOVERY = {
    "device_list": [
        {
            "device_id": 0,
            "device_name": "Intel(R) Data Center GPU Flex 170",
            "device_type": "GPU",
            "device_function_type": "physical",
            "pci_bdf_address": "0000:4d:00.0",
            "pci_device_id": "0x56c0",
            "uuid": "01000000-0000-004d-0000-000856c08086",
            "vendor_name": "Intel(R) Corporation",
            "drm_device": "/dev/dri/card1",
        },
        {
            "device_id": 1,
            "device_name": "Intel(R) Data Center GPU Flex 170 VF",
            "device_type": "GPU",
            "device_function_type": "virtual",
            "pci_bdf_address": "0000:4d:00.1",
        },
    ]
}
DETAIL = {
    "device_id": 0,
    "device_name": "Intel(R) Data Center GPU Flex 170",
    "memory_physical_size_byte": "14193524736",
    "memory_free_size_byte": "14011367424",
    "driver_version": "I915_24.1.11_PSB_240117.14",
    "pci_bdf_address": "0000:4d:00.0",
    "pci_device_id": "56c0",
}


def test_xpu_smi_physical_gpus_with_detail(make_view: ViewFactory) -> None:
    view = make_view(
        files={"/sys/bus/pci/devices/0000:4d:00.0/numa_node": "0\n"},
        commands=[
            {"argv": XPU_SMI_LIST_ARGV, "returncode": 0, "stdout": json.dumps(DISCOVERY)},
            {"argv": xpu_smi_device_argv(0), "returncode": 0, "stdout": json.dumps(DETAIL)},
        ],
    )
    probe = detect_intel_xpu(view)
    assert probe.detection == "xpu-smi"
    (gpu,) = probe.devices  # the virtual function is not a second GPU
    assert gpu.name == "Intel(R) Data Center GPU Flex 170"
    assert gpu.memory_total_bytes == 14193524736 and gpu.memory_free_bytes == 14011367424
    assert (gpu.architecture, gpu.numa_node, gpu.pci_bus_id) == ("ats-m150", 0, "0000:4d:00.0")
    assert gpu.driver_version == "I915_24.1.11_PSB_240117.14"


def _intel_card(card: str, device: str, render: bool) -> tuple[dict[str, str], list[str]]:
    base = f"/sys/class/drm/{card}/device"
    files = {
        f"{base}/uevent": "PCI_SLOT_NAME=0000:00:02.0\n",
        f"{base}/vendor": "0x8086\n",
        f"{base}/device": f"{device}\n",
    }
    return files, [f"{base}/drm/renderD128"] if render else []


def test_integrated_and_consumer_intel_graphics_are_not_accelerators(
    make_view: ViewFactory,
) -> None:
    files, dirs = _intel_card("card0", "0x56a0", render=True)  # Arc A770
    probe = detect_intel_xpu(make_view(files=files, dirs=dirs))
    assert probe.devices == []
    assert probe.detection == (
        "absent: xpu-smi: not installed; sysfs: card0 (0x56a0) is not a data-center GPU"
    )


def test_data_center_card_needs_a_render_node(make_view: ViewFactory) -> None:
    files, _ = _intel_card("card0", "0x0bd5", render=False)
    assert detect_intel_xpu(make_view(files=files)).devices == []
    files, dirs = _intel_card("card0", "0x0bd5", render=True)
    (gpu,) = detect_intel_xpu(make_view(files=files, dirs=dirs)).devices
    assert (gpu.name, gpu.architecture) == ("Intel(R) Data Center GPU Max 1550", "pvc")
