"""NVIDIA: NVML through a pynvml-shaped object (returning nvidia-ml-py's own ctypes structs and
errors, since no GPU is here) and the nvidia-smi CSV fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynvml
from llmd_sdk.hardware.nvidia import (
    SMI_FIELDS,
    SMI_FIELDS_LEGACY,
    detect_nvidia,
    parse_nvidia_smi,
    query_nvml,
    smi_argv,
)
from llmd_sdk.hardware.recording import ReplayNVML
from llmd_sdk.hardware.system import SystemView

ViewFactory = Callable[..., SystemView]

MIB = 2**20


class FakeNVML:
    """Answers like pynvml on a machine with the given GPUs."""

    def __init__(
        self,
        gpus: list[dict[str, Any]],
        *,
        driver: str = "550.90.07",
        init_error: int | None = None,
        unsupported: tuple[str, ...] = (),
    ) -> None:
        self.gpus = gpus
        self.driver = driver
        self.init_error = init_error
        self.unsupported = unsupported
        self.calls: list[str] = []

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if call in self.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("driver")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        self._check("name")
        return self.gpus[handle]["name"]  # type: ignore[no-any-return]

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._check("uuid")
        return str(self.gpus[handle]["uuid"])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        self._check("memory")
        gpu = self.gpus[handle]
        return pynvml.c_nvmlMemory_t(
            total=gpu["total"], free=gpu["free"], used=gpu["total"] - gpu["free"]
        )

    def nvmlDeviceGetPciInfo(self, handle: int) -> Any:
        self._check("pci")
        info = pynvml.nvmlPciInfo_t()
        info.busId = self.gpus[handle]["bus"]  # the struct stores bytes, reads back str
        return info

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        self._check("cc")
        return self.gpus[handle]["cc"]  # type: ignore[no-any-return]

    def nvmlDeviceGetNumaNodeId(self, handle: int) -> int:
        self._check("numa")
        return int(self.gpus[handle]["numa"])


H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-5a1b7c3e-0d2f-4e6a-8b9c-1d2e3f4a5b6c",
    "bus": "00000000:18:00.0",
    "total": 85520809984,
    "free": 84942979072,
    "cc": (9, 0),
    "numa": 0,
}
A100 = {
    "name": b"NVIDIA A100-SXM4-40GB",  # older nvidia-ml-py releases returned bytes
    "uuid": "GPU-0f9e8d7c-6b5a-4938-a2b1-c0d9e8f7a6b5",
    "bus": "00000000:B7:00.0",
    "total": 42949672960,
    "free": 42314694656,
    "cc": (8, 0),
    "numa": 1,
}


def test_nvml_devices_from_real_pynvml_structs(make_view: ViewFactory) -> None:
    fake = FakeNVML([H100, A100])
    probe = detect_nvidia(make_view(nvml=fake))
    assert probe.detection == "nvml"
    h100, a100 = probe.devices
    assert (h100.name, h100.architecture, h100.numa_node) == ("NVIDIA H100 80GB HBM3", "9.0", 0)
    assert h100.memory_total_bytes == 85520809984 and h100.memory_free_bytes == 84942979072
    assert h100.pci_bus_id == "0000:18:00.0"
    assert h100.driver_version == "550.90.07"
    assert (a100.name, a100.architecture, a100.pci_bus_id) == (
        "NVIDIA A100-SXM4-40GB",
        "8.0",
        "0000:b7:00.0",
    )
    assert fake.calls[0] == "init" and fake.calls[-1] == "shutdown"


def test_a_query_nvml_does_not_support_leaves_that_field_empty(make_view: ViewFactory) -> None:
    fake = FakeNVML([H100], unsupported=("numa", "cc", "driver"))
    view = make_view(nvml=fake, files={"/sys/bus/pci/devices/0000:18:00.0/numa_node": "1\n"})
    snapshot = query_nvml(fake)
    assert snapshot["devices"][0]["errors"] == {
        "cuda_compute_capability": "Not Supported",
        "numa_node": "Not Supported",
    }
    assert snapshot["driver_error"] == "Not Supported"
    (gpu,) = detect_nvidia(view).devices
    assert gpu.architecture is None and gpu.driver_version is None
    assert gpu.numa_node == 1  # sysfs stands in for NVML


def test_nvml_snapshot_replays_to_the_same_devices(make_view: ViewFactory) -> None:
    live = detect_nvidia(make_view(nvml=FakeNVML([H100, A100]))).devices
    replayed = detect_nvidia(make_view(nvml=ReplayNVML(query_nvml(FakeNVML([H100, A100])))))
    assert replayed.devices == live


SMI_OUT = (
    "0, NVIDIA H100 80GB HBM3, GPU-5a1b7c3e-0d2f-4e6a-8b9c-1d2e3f4a5b6c, 00000000:18:00.0, "
    "81559, 81008, 550.90.07, 9.0\n"
    "1, NVIDIA H100 80GB HBM3, GPU-6b2c8d4f-1e3a-4f7b-9c0d-2e3f4a5b6c7d, 00000000:2A:00.0, "
    "81559, [N/A], 550.90.07, 9.0\n"
)


def test_nvml_failure_falls_back_to_nvidia_smi(make_view: ViewFactory) -> None:
    fake = FakeNVML([H100], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    view = make_view(
        nvml=fake,
        commands=[{"argv": smi_argv(), "returncode": 0, "stdout": SMI_OUT}],
        files={"/sys/bus/pci/devices/0000:2a:00.0/numa_node": "0\n"},
    )
    probe = detect_nvidia(view)
    assert probe.detection == "nvidia-smi (nvml: Driver Not Loaded)"
    first, second = probe.devices
    assert first.memory_total_bytes == 81559 * MIB and first.memory_free_bytes == 81008 * MIB
    assert second.memory_free_bytes is None  # [N/A]
    assert second.pci_bus_id == "0000:2a:00.0" and second.numa_node == 0
    assert first.numa_node is None  # no sysfs entry for it in this tree


def test_old_driver_without_compute_cap_is_queried_again(make_view: ViewFactory) -> None:
    legacy = "".join(line.rsplit(", ", 1)[0] + "\n" for line in SMI_OUT.splitlines())
    view = make_view(
        commands=[
            {
                "argv": smi_argv(),
                "returncode": 2,
                "stdout": 'Field "compute_cap" is not a valid field to query.\n',
            },
            {"argv": smi_argv(SMI_FIELDS_LEGACY), "returncode": 0, "stdout": legacy},
        ]
    )
    probe = detect_nvidia(view)
    assert probe.detection.startswith("nvidia-smi")
    assert [d.architecture for d in probe.devices] == [None, None]
    assert [d.driver_version for d in probe.devices] == ["550.90.07"] * 2


def test_nvidia_smi_that_cannot_reach_the_driver_is_reported(make_view: ViewFactory) -> None:
    message = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n"
    )
    view = make_view(commands=[{"argv": smi_argv(), "returncode": 9, "stdout": message}])
    probe = detect_nvidia(view)
    assert probe.devices == []
    assert probe.detection == (
        "absent: nvml: NVML Shared Library Not Found; nvidia-smi: exit 9: " + message.strip()
    )


def test_malformed_nvidia_smi_lines_are_skipped(make_view: ViewFactory) -> None:
    garbage = "this is not csv, at all\n\n" + SMI_OUT.splitlines()[0] + "\nx, y\n"
    devices = parse_nvidia_smi(make_view(), garbage, SMI_FIELDS)
    assert [d.index for d in devices] == [0]


def test_timeout_and_missing_tool_are_reasons_not_errors(make_view: ViewFactory) -> None:
    view = make_view(commands=[{"argv": smi_argv(), "timed_out": True}])
    assert detect_nvidia(view).detection.endswith("nvidia-smi: nvidia-smi ran past 10s")
    assert detect_nvidia(make_view()).detection.endswith("nvidia-smi: not installed")
