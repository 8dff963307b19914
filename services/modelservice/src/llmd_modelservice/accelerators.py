"""What differs per accelerator: device visibility, tuning env, Kubernetes resource names, images.

Facts from upstream docs: ROCm deprecates CUDA_VISIBLE_DEVICES in vLLM in favour of
HIP_VISIBLE_DEVICES; AITER kernels (`VLLM_ROCM_USE_AITER=1`) target MI300/MI325 (gfx942) and
MI350/MI355 (gfx950); `HIP_FORCE_DEV_KERNARG=1` is set in vLLM's ROCm images and recommended on
bare metal; the CPU backend reads `VLLM_CPU_KVCACHE_SPACE` (GiB) and `VLLM_CPU_OMP_THREADS_BIND`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Accelerator = Literal["nvidia", "amd", "intel-xpu", "tpu", "cpu"]
GPU_LIKE: tuple[Accelerator, ...] = ("nvidia", "amd", "intel-xpu", "tpu")

VISIBLE_DEVICES_ENV: dict[Accelerator, str] = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "HIP_VISIBLE_DEVICES",
    "intel-xpu": "ZE_AFFINITY_MASK",
    "tpu": "TPU_VISIBLE_CHIPS",
}

# Extended resource names of each vendor's Kubernetes device plugin.
K8S_RESOURCE: dict[Accelerator, str] = {
    "nvidia": "nvidia.com/gpu",
    "amd": "amd.com/gpu",
    "intel-xpu": "gpu.intel.com/i915",
    "tpu": "google.com/tpu",
}

VLLM_VERSION = "v0.33.0"
VLLM_IMAGES: dict[Accelerator, str] = {
    "nvidia": f"vllm/vllm-openai:{VLLM_VERSION}",
    "amd": f"vllm/vllm-openai-rocm:{VLLM_VERSION}",
    "intel-xpu": f"vllm/vllm-openai-xpu:{VLLM_VERSION}",
    "tpu": f"vllm/vllm-tpu:{VLLM_VERSION}",
    "cpu": f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:{VLLM_VERSION}",
}
SGLANG_IMAGE = "lmsysorg/sglang:latest"
SIM_IMAGE = "llmd-sim:latest"

AITER_ARCHS = ("gfx942", "gfx950")


def visibility_env(accel: Accelerator, devices: Sequence[int]) -> dict[str, str]:
    """Pin a local replica to its devices (Kubernetes' device plugins do this in pods)."""
    if accel == "cpu" or not devices:
        return {}
    return {VISIBLE_DEVICES_ENV[accel]: ",".join(str(d) for d in devices)}


def tuning_env(accel: Accelerator, architecture: str | None) -> dict[str, str]:
    if accel == "amd":
        env = {"HIP_FORCE_DEV_KERNARG": "1"}
        if architecture and architecture.split(":")[0] in AITER_ARCHS:
            env["VLLM_ROCM_USE_AITER"] = "1"
        return env
    return {}


def cpu_bind_ranges(physical_cores: int, slots: int, slot: int, tensor: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for one replica: its share of the cores, `|` per TP rank.

    One core stays free for the API server when the host has more than two (vLLM's advice).
    """
    usable = physical_cores - 1 if physical_cores > 2 else physical_cores
    per_replica = max(1, usable // max(1, slots))
    start = (slot * per_replica) % max(1, usable)
    per_rank = max(1, per_replica // tensor)
    ranges = []
    for r in range(tensor):
        lo = start + r * per_rank
        hi = lo + per_rank - 1
        ranges.append(f"{lo}-{hi}")
    return "|".join(ranges)
