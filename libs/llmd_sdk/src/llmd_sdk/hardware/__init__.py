"""Hardware detection: NVIDIA, AMD, Intel XPU, Google TPU and the CPU, into one `HardwareProfile`.

    from llmd_sdk.hardware import detect
    profile = detect()                      # this machine
    profile = detect(SystemView.recorded("tests/hardware/fixtures/cpu-host"))

Imports only the standard library and pydantic; nvidia-ml-py is loaded when NVML is probed.
"""

from llmd_sdk.hardware.detection import detect
from llmd_sdk.hardware.probe import Probe
from llmd_sdk.hardware.profile import Accelerator, AcceleratorDevice, CPUInfo, HardwareProfile
from llmd_sdk.hardware.system import CommandResult, CommandRunner, NVMLApi, SystemView

__all__ = [
    "Accelerator",
    "AcceleratorDevice",
    "CPUInfo",
    "CommandResult",
    "CommandRunner",
    "HardwareProfile",
    "NVMLApi",
    "Probe",
    "SystemView",
    "detect",
]
