"""The host CPU: model, architecture, physical and logical cores, memory, NUMA nodes and the ISA
features CPU inference engines dispatch on, from /proc/cpuinfo, /proc/meminfo and sysfs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmd_sdk.hardware.pci import parse_int
from llmd_sdk.hardware.profile import CPUInfo
from llmd_sdk.hardware.system import SystemView

CPU_DIR = "/sys/devices/system/cpu"
NODE_DIR = "/sys/devices/system/node"

# The ISA features that matter to CPU inference kernels (oneDNN/IPEX on x86, KleidiAI/ACL on
# Arm, z/Arch vector on s390x), in the order they are reported.
ENGINE_ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "neon",
    "asimd",
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
    "sve2",
    "vx",
    "vxe",
    "vxe2",
)

# (implementer, part) of Arm server cores, from the MIDR fields /proc/cpuinfo prints.
_ARM_CORES = {
    (0x41, 0xD0C): "Arm Neoverse-N1",
    (0x41, 0xD40): "Arm Neoverse-V1",
    (0x41, 0xD49): "Arm Neoverse-N2",
    (0x41, 0xD4F): "Arm Neoverse-V2",
}


@dataclass
class CPUProbe:
    info: CPUInfo
    notes: list[str] = field(default_factory=list)

    @property
    def detection(self) -> str:
        return "procfs" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def _stanzas(cpuinfo: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line separated block."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _model_name(blocks: list[dict[str, str]]) -> str | None:
    for block in blocks:
        for key in ("model name", "cpu model", "hardware", "cpu"):
            if block.get(key):
                return block[key]
    for block in blocks:
        implementer = block.get("cpu implementer")
        part = block.get("cpu part")
        if implementer and part:
            try:
                core = (int(implementer, 16), int(part, 16))
            except ValueError:
                continue
            return _ARM_CORES.get(core, f"Arm implementer {implementer} part {part}")
    return None


def parse_cpu_list(text: str | None) -> list[int]:
    """A kernel cpu list ("0-3,8,10-11") as numbers; empty when malformed."""
    cpus: list[int] = []
    for part in (text or "").strip().split(","):
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            cpus.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError:
            return []
    return cpus


def _isa_flags(blocks: list[dict[str, str]]) -> list[str]:
    raw: set[str] = set()
    for block in blocks[:1] or [{}]:
        raw.update(block.get("flags", "").split())  # x86
        raw.update(block.get("features", "").split())  # Arm, s390x
    if not raw:
        for block in blocks:  # s390x prints features once, outside the per-cpu blocks
            raw.update(block.get("features", "").split())
    if "asimd" in raw:
        raw.add("neon")  # AArch64 calls NEON "asimd"
    return [flag for flag in ENGINE_ISA_FLAGS if flag in raw]


def _memory_total(view: SystemView) -> int | None:
    for line in (view.read_text("/proc/meminfo") or "").splitlines():
        match = re.match(r"MemTotal:\s+(\d+)\s*kB", line)
        if match:
            return int(match.group(1)) * 1024
    return None


def _sysfs_cores(view: SystemView, cpus: list[int]) -> int | None:
    """Distinct (package, core) pairs from sysfs topology."""
    cores = set()
    for cpu in cpus:
        base = f"{CPU_DIR}/cpu{cpu}/topology"
        package = parse_int(view.read_value(f"{base}/physical_package_id"))
        core = parse_int(view.read_value(f"{base}/core_id"))
        if package is None or core is None:
            return None
        cores.add((package, core))
    return len(cores) or None


def detect_cpu(view: SystemView) -> CPUProbe:
    """Never raises: what cannot be read is estimated and noted."""
    notes: list[str] = []
    cpuinfo = view.read_text("/proc/cpuinfo")
    if cpuinfo is None:
        notes.append("/proc/cpuinfo unreadable")
    blocks = _stanzas(cpuinfo or "")
    processors = [b for b in blocks if "processor" in b]

    online = parse_cpu_list(view.read_value(f"{CPU_DIR}/online"))
    logical = len(online) or len(processors)
    if logical == 0:
        logical = 1
        notes.append("logical cores unknown, assumed 1")

    pairs = {
        (b["physical id"], b["core id"])
        for b in processors
        if "physical id" in b and "core id" in b
    }
    physical = len(pairs) or _sysfs_cores(view, online or list(range(logical)))
    if physical is None:
        physical = logical
        notes.append("physical cores unknown, counted logical cores")

    memory = _memory_total(view)
    if memory is None:
        memory = 0
        notes.append("MemTotal unreadable")

    nodes = len(view.list_dir(NODE_DIR, r"node\d+"))
    if nodes == 0:
        nodes = 1
        notes.append("no NUMA information, assumed 1 node")

    model = _model_name(blocks)
    if model is None:
        model = "unknown"
        notes.append("model name unknown")

    info = CPUInfo(
        model_name=model,
        architecture=view.machine,
        physical_cores=max(1, min(physical, logical)),
        logical_cores=logical,
        memory_total_bytes=memory,
        numa_nodes=nodes,
        isa_flags=_isa_flags(processors or blocks),
    )
    return CPUProbe(info, notes)
