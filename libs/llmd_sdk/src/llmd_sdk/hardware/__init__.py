"""Hardware detection: NVIDIA, AMD, Intel XPU, Google TPU and the CPU, into one `HardwareProfile`."""

from llmd_sdk.hardware.profile import AcceleratorDevice, CPUInfo, HardwareProfile

__all__ = ["AcceleratorDevice", "CPUInfo", "HardwareProfile"]
