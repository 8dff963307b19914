"""The hardware profile: what accelerators and CPU a node has, in one pydantic model.

Detectors (one module per vendor) fill it; `python -m llmd_sdk.hardware` prints it as JSON; the
modelservice planner reads it to choose engine flags and check that a model fits.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Accelerator = Literal["nvidia", "amd", "intel-xpu", "tpu", "cpu"]


class AcceleratorDevice(BaseModel):
    """One accelerator device (a GPU, an XPU or a TPU chip)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["nvidia", "amd", "intel-xpu", "tpu"]
    index: int = Field(ge=0)
    name: str
    memory_total_bytes: int | None = Field(default=None, ge=0)
    memory_free_bytes: int | None = Field(default=None, ge=0)
    uuid: str | None = None
    pci_bus_id: str | None = None
    numa_node: int | None = None
    # NVIDIA "9.0", AMD "gfx942", TPU "v5e": the architecture tag engines key their kernels on.
    architecture: str | None = None
    driver_version: str | None = None


class CPUInfo(BaseModel):
    """The host CPU and memory."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    architecture: str  # platform.machine(): x86_64, aarch64, ...
    physical_cores: int = Field(ge=1)
    logical_cores: int = Field(ge=1)
    memory_total_bytes: int = Field(ge=0)
    numa_nodes: int = Field(ge=1)
    # ISA features engines care about (avx2, avx512f, avx512_bf16, amx_tile, amx_bf16, sve, neon).
    isa_flags: list[str] = Field(default_factory=list)


class HardwareProfile(BaseModel):
    """Everything the planner needs to know about one node."""

    model_config = ConfigDict(extra="forbid")

    hostname: str
    # The accelerator kind engines should target: the first vendor found, else "cpu".
    accelerator: Accelerator
    devices: list[AcceleratorDevice] = Field(default_factory=list)
    cpu: CPUInfo
    # How each vendor was probed or why it was not found: "nvml", "nvidia-smi", "sysfs",
    # "absent: ...".
    detection: dict[str, str] = Field(default_factory=dict)

    @property
    def device_count(self) -> int:
        return len(self.devices)

    @property
    def total_device_memory_bytes(self) -> int:
        return sum(d.memory_total_bytes or 0 for d in self.devices)
