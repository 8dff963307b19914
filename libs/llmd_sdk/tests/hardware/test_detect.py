"""detect(): vendor preference, failures recorded instead of raised, and this machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llmd_sdk.hardware import HardwareProfile, detect
from llmd_sdk.hardware import detection as detect_module
from llmd_sdk.hardware.probe import Probe
from llmd_sdk.hardware.system import SystemView

ViewFactory = Callable[..., SystemView]


def test_this_machine_gives_a_valid_profile() -> None:
    profile = detect()
    assert HardwareProfile.model_validate_json(profile.model_dump_json()) == profile
    assert profile.cpu.logical_cores >= 1
    assert set(profile.detection) == {"nvidia", "amd", "intel-xpu", "tpu", "cpu"}


def test_first_vendor_with_devices_wins_and_all_devices_are_kept(make_view: ViewFactory) -> None:
    files = {"/dev/accel0": ""}
    amd = "/sys/class/drm/card0/device"
    files |= {
        f"{amd}/uevent": "PCI_SLOT_NAME=0000:03:00.0\n",
        f"{amd}/vendor": "0x1002\n",
        f"{amd}/device": "0x740f\n",
        f"{amd}/mem_info_vram_total": "68702699520\n",
    }
    profile = detect(make_view(files=files, env={"TPU_ACCELERATOR_TYPE": "v4-8"}))
    assert profile.accelerator == "amd"
    assert [d.kind for d in profile.devices] == ["amd", "tpu"]


def test_a_detector_that_raises_is_recorded_not_propagated(
    make_view: ViewFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(view: SystemView) -> Probe:
        raise KeyError("index")

    vendors = list(detect_module.VENDOR_DETECTORS)
    vendors[0] = ("nvidia", broken)
    monkeypatch.setattr(detect_module, "VENDOR_DETECTORS", tuple(vendors))
    profile = detect_module.detect(make_view())
    assert profile.detection["nvidia"] == "absent: error: KeyError: 'index'"
    assert profile.accelerator == "cpu"


def test_garbage_everywhere_still_gives_a_profile(make_view: ViewFactory) -> None:
    junk = "\x00\xff garbage ::: \n"
    files = {
        "/proc/cpuinfo": junk,
        "/proc/meminfo": junk,
        "/sys/devices/system/cpu/online": junk,
        "/sys/class/drm/card0/device/vendor": junk,
        "/sys/class/drm/card1/device/vendor": "0x1002\n",
        "/sys/class/drm/card1/device/mem_info_vram_total": junk,
        "/sys/class/kfd/kfd/topology/nodes/0/properties": junk,
        "/dev/accel0": "",
    }
    commands = [
        {"argv": argv, "returncode": 0, "stdout": junk}
        for argv in (
            ["amd-smi", "static", "--asic", "--bus", "--vram", "--driver", "--json"],
            ["xpu-smi", "discovery", "--json"],
        )
    ]
    profile = detect(make_view(files=files, commands=commands, env={"TPU_ACCELERATOR_TYPE": "?"}))
    assert profile.accelerator == "cpu"
    assert profile.detection["amd"].startswith("absent: amd-smi: unreadable output")
    assert profile.detection["intel-xpu"].startswith("absent: xpu-smi: unreadable output")
    assert profile.detection["tpu"] == "absent: unknown TPU_ACCELERATOR_TYPE=?"
