"""CPU: /proc/cpuinfo on x86 and Arm, meminfo, NUMA, and what happens when they are missing."""

from __future__ import annotations

from collections.abc import Callable

from llmd_sdk.hardware.cpu import detect_cpu, parse_cpu_list
from llmd_sdk.hardware.system import SystemView

ViewFactory = Callable[..., SystemView]


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("0") == [0]
    assert parse_cpu_list("a-b") == []
    assert parse_cpu_list(None) == []


def test_x86_hyperthreads_are_logical_not_physical(make_view: ViewFactory) -> None:
    blocks = []
    for n, (pkg, core) in enumerate([(0, 0), (0, 1), (0, 0), (0, 1)]):
        blocks.append(
            f"processor\t: {n}\nmodel name\t: Test CPU\nphysical id\t: {pkg}\n"
            f"core id\t\t: {core}\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16 ht\n"
        )
    view = make_view(
        files={
            "/proc/cpuinfo": "\n".join(blocks),
            "/proc/meminfo": "MemTotal:       16318480 kB\nMemFree: 1 kB\n",
        },
        dirs=["/sys/devices/system/node/node0", "/sys/devices/system/node/node1"],
    )
    probe = detect_cpu(view)
    info = probe.info
    assert (info.logical_cores, info.physical_cores, info.numa_nodes) == (4, 2, 2)
    assert info.memory_total_bytes == 16318480 * 1024
    assert info.isa_flags == ["avx2", "avx512f", "amx_tile", "amx_bf16"]
    assert probe.detection == "procfs"


def test_missing_and_malformed_files_give_a_valid_estimate(make_view: ViewFactory) -> None:
    view = make_view(files={"/proc/meminfo": "MemTotal: lots\n"})
    probe = detect_cpu(view)
    assert probe.info.logical_cores == 1 and probe.info.physical_cores == 1
    assert probe.info.memory_total_bytes == 0 and probe.info.model_name == "unknown"
    assert probe.detection == (
        "procfs (/proc/cpuinfo unreadable; logical cores unknown, assumed 1; "
        "physical cores unknown, counted logical cores; MemTotal unreadable; "
        "no NUMA information, assumed 1 node; model name unknown)"
    )


def test_unknown_arm_core_is_named_by_its_ids(make_view: ViewFactory) -> None:
    cpuinfo = (
        "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n"
    )
    view = make_view(files={"/proc/cpuinfo": cpuinfo}, machine="aarch64")
    info = detect_cpu(view).info
    assert info.model_name == "Arm implementer 0x61 part 0x022"
    assert info.isa_flags == ["neon", "asimd", "sve"]
    assert info.architecture == "aarch64"
