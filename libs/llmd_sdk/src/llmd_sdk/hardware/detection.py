"""`detect()`: every vendor detector and the CPU, combined into one `HardwareProfile`."""

from __future__ import annotations

from collections.abc import Callable

from llmd_sdk.hardware.amd import detect_amd
from llmd_sdk.hardware.cpu import detect_cpu
from llmd_sdk.hardware.intel_xpu import detect_intel_xpu
from llmd_sdk.hardware.nvidia import detect_nvidia
from llmd_sdk.hardware.probe import Probe, describe_error
from llmd_sdk.hardware.profile import Accelerator, HardwareProfile
from llmd_sdk.hardware.system import SystemView
from llmd_sdk.hardware.tpu import detect_tpu

# Probe order is preference order: the first vendor with devices is the node's accelerator.
VENDOR_DETECTORS: tuple[tuple[Accelerator, Callable[[SystemView], Probe]], ...] = (
    ("nvidia", detect_nvidia),
    ("amd", detect_amd),
    ("intel-xpu", detect_intel_xpu),
    ("tpu", detect_tpu),
)


def detect(view: SystemView | None = None) -> HardwareProfile:
    """Probe the machine (or a recorded one). Never raises for a missing tool, a missing or
    malformed file or a failing library: each vendor's outcome is recorded in `detection`."""
    view = view or SystemView.live()
    accelerator: Accelerator = "cpu"
    devices = []
    detection: dict[str, str] = {}
    for vendor, detector in VENDOR_DETECTORS:
        try:
            probe = detector(view)
        except Exception as exc:  # a detector bug must not take the profile down
            probe = Probe.absent(f"error: {type(exc).__name__}: {describe_error(exc)}")
        detection[vendor] = probe.detection
        if probe.devices and accelerator == "cpu":
            accelerator = vendor
        devices.extend(probe.devices)
    cpu = detect_cpu(view)
    detection["cpu"] = cpu.detection
    return HardwareProfile(
        hostname=view.hostname,
        accelerator=accelerator,
        devices=devices,
        cpu=cpu.info,
        detection=detection,
    )
