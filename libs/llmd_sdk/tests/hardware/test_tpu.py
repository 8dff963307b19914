"""TPU: PCI ids, the TPU environment and device nodes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llmd_sdk.hardware.system import SystemView
from llmd_sdk.hardware.tpu import chip_from_accelerator_type, chips_per_host, detect_tpu

ViewFactory = Callable[..., SystemView]


@pytest.mark.parametrize(
    ("accelerator_type", "generation"),
    [
        ("v5litepod-8", "v5e"),
        ("v5p-16", "v5p"),
        ("v6e-4", "v6e"),
        ("v4-8", "v4"),
        ("tpu7x-8", "7x"),
        ("v3-8", "v3"),
        ("h100-8", None),
        ("", None),
    ],
)
def test_accelerator_type_prefixes(accelerator_type: str, generation: str | None) -> None:
    chip = chip_from_accelerator_type(accelerator_type)
    assert (chip.generation if chip else None) == generation


def test_chips_per_host_bounds() -> None:
    assert chips_per_host("2,2,1") == 4
    assert chips_per_host("2,4,1") == 8
    assert chips_per_host("2,x,1") is None
    assert chips_per_host("0,2,1") is None


def test_vfio_groups_without_tpu_evidence_are_not_tpus(make_view: ViewFactory) -> None:
    probe = detect_tpu(make_view(files={"/dev/vfio/12": ""}))
    assert probe.devices == []
    assert probe.detection == "absent: /dev/vfio/12 present but no TPU PCI device or env"


def test_env_without_device_nodes_is_reported(make_view: ViewFactory) -> None:
    probe = detect_tpu(make_view(env={"TPU_ACCELERATOR_TYPE": "v6e-8"}))
    assert probe.detection == "absent: TPU_ACCELERATOR_TYPE=v6e-8 but no TPU device node under /dev"


def test_chips_per_host_caps_unrelated_vfio_groups(make_view: ViewFactory) -> None:
    view = make_view(
        files={f"/dev/vfio/{i}": "" for i in range(5)},
        env={"TPU_ACCELERATOR_TYPE": "v6e-4", "TPU_CHIPS_PER_HOST_BOUNDS": "2,2,1"},
    )
    probe = detect_tpu(view)
    assert [d.name for d in probe.devices] == ["TPU v6e"] * 4
    assert probe.devices[0].memory_total_bytes == 32 * 2**30


def test_v2_and_v3_share_a_device_id_and_differ_by_subsystem(make_view: ViewFactory) -> None:
    base = "/sys/bus/pci/devices/0000:00:05.0"
    files = {
        f"{base}/vendor": "0x1ae0\n",
        f"{base}/device": "0x0027\n",
        f"{base}/subsystem_device": "0x004f\n",
        "/dev/accel0": "",
    }
    (chip,) = detect_tpu(make_view(files=files)).devices
    assert (chip.architecture, chip.pci_bus_id) == ("v3", "0000:00:05.0")
