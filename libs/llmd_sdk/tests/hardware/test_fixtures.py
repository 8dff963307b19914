"""Every committed profile is valid, and every recorded machine replays to its profile.

`fixtures/<name>.json` is `python -m llmd_sdk.hardware` output; `fixtures/<name>/` (when
present) is the same machine recorded with `--record`. `cpu-host` was recorded on the
development VM; the other trees were written by hand from the tools' documented formats.
A machine recorded elsewhere (the GPU host) is picked up by dropping both into fixtures/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llmd_sdk.hardware import HardwareProfile, SystemView, detect
from llmd_sdk.hardware.nvidia import SMI_FIELDS, parse_nvidia_smi, smi_argv

FIXTURES = Path(__file__).parent / "fixtures"
PROFILES = sorted(FIXTURES.glob("*.json"))
RECORDED = sorted(p for p in FIXTURES.iterdir() if p.is_dir())


def _recorded_smi(tree: Path) -> dict[str, object] | None:
    commands = json.loads((tree / "commands.json").read_text())
    return next((c for c in commands if c["argv"] == smi_argv(SMI_FIELDS)), None)


# Machines recorded with both NVML answers and nvidia-smi output.
BOTH_NVIDIA_SOURCES = [
    t
    for t in RECORDED
    if _recorded_smi(t) is not None and "error" not in json.loads((t / "nvml.json").read_text())
]


def test_fixtures_exist() -> None:
    assert "cpu-host.json" in {p.name for p in PROFILES}
    assert len(RECORDED) >= 8
    assert BOTH_NVIDIA_SOURCES


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_committed_profile_is_valid(path: Path) -> None:
    profile = HardwareProfile.model_validate_json(path.read_text())
    assert set(profile.detection) == {"nvidia", "amd", "intel-xpu", "tpu", "cpu"}
    if profile.accelerator == "cpu":
        assert profile.devices == []
    else:
        assert any(d.kind == profile.accelerator for d in profile.devices)
        # The accelerator is the first vendor, in preference order, that has devices.
        order = ["nvidia", "amd", "intel-xpu", "tpu"]
        kinds = {d.kind for d in profile.devices}
        assert profile.accelerator == next(k for k in order if k in kinds)
        assert not profile.detection[profile.accelerator].startswith("absent")
    for kind in ("nvidia", "amd", "intel-xpu", "tpu"):
        found = [d for d in profile.devices if d.kind == kind]
        assert [d.index for d in found] == sorted({d.index for d in found})
        assert bool(found) != profile.detection[kind].startswith("absent")
    assert profile.cpu.physical_cores <= profile.cpu.logical_cores


@pytest.mark.parametrize("tree", RECORDED, ids=lambda p: p.name)
def test_recorded_machine_replays_to_its_profile(tree: Path) -> None:
    expected = HardwareProfile.model_validate_json((tree.parent / f"{tree.name}.json").read_text())
    assert detect(SystemView.recorded(tree)) == expected


@pytest.mark.parametrize("tree", BOTH_NVIDIA_SOURCES, ids=lambda p: p.name)
def test_nvml_and_nvidia_smi_agree_where_both_were_recorded(tree: Path) -> None:
    """`--record` runs nvidia-smi beside NVML on NVIDIA hosts: both must describe the same GPUs."""
    smi = _recorded_smi(tree)
    assert smi is not None
    view = SystemView.recorded(tree)
    from_smi = parse_nvidia_smi(view, str(smi["stdout"]))
    from_nvml = [d for d in detect(view).devices if d.kind == "nvidia"]
    assert len(from_smi) == len(from_nvml)
    for a, b in zip(from_smi, from_nvml, strict=True):
        assert (a.index, a.name, a.uuid, a.pci_bus_id) == (b.index, b.name, b.uuid, b.pci_bus_id)
        assert (a.architecture, a.driver_version) == (b.architecture, b.driver_version)
        # nvidia-smi prints whole MiB.
        assert a.memory_total_bytes == (b.memory_total_bytes or 0) // 2**20 * 2**20


def test_cpu_host_fixture_describes_a_cpu_only_machine() -> None:
    profile = HardwareProfile.model_validate_json((FIXTURES / "cpu-host.json").read_text())
    assert profile.accelerator == "cpu"
    assert profile.cpu.architecture == "x86_64"
    assert profile.cpu.memory_total_bytes > 1 << 30
    assert profile.cpu.numa_nodes >= 1
    assert "avx2" in profile.cpu.isa_flags
    assert profile.detection["nvidia"].startswith("absent: nvml:")


def test_crafted_fixtures_read_the_formats_as_documented() -> None:
    """Spot checks of values the hand-written trees encode in each tool's own units."""
    h100 = detect(SystemView.recorded(FIXTURES / "nvidia-dgx-h100-smi"))
    assert h100.detection["nvidia"] == "nvidia-smi (nvml: No module named 'pynvml')"
    assert h100.device_count == 8
    assert h100.devices[0].memory_total_bytes == 81559 * 2**20  # MiB with nounits
    assert h100.devices[0].pci_bus_id == "0000:18:00.0"  # from 00000000:18:00.0
    assert [d.numa_node for d in h100.devices] == [0, 0, 0, 0, 1, 1, 1, 1]  # from sysfs
    assert h100.cpu.physical_cores == 8 and h100.cpu.logical_cores == 16

    gh200 = detect(SystemView.recorded(FIXTURES / "nvidia-gh200-nvml"))
    assert gh200.devices[0].pci_bus_id == "0009:01:00.0"
    assert gh200.devices[0].numa_node == 1  # NVML said Not Supported; sysfs knows
    assert gh200.cpu.model_name == "Arm Neoverse-V2"
    assert {"neon", "sve", "sve2", "bf16"} <= set(gh200.cpu.isa_flags)

    mi300 = detect(SystemView.recorded(FIXTURES / "amd-mi300x-amdsmi"))
    assert mi300.devices[0].memory_total_bytes == 196608 * 2**20  # amd-smi "MB" is MiB
    assert mi300.devices[1].numa_node == 1

    mi210 = detect(SystemView.recorded(FIXTURES / "amd-mi210-sysfs"))
    assert [d.architecture for d in mi210.devices] == ["gfx90a", "gfx90a"]  # KFD 90010
    assert [d.name for d in mi210.devices] == ["Instinct MI210", "AMD Instinct MI210"]

    tpu = detect(SystemView.recorded(FIXTURES / "tpu-v5e-sysfs"))
    assert tpu.total_device_memory_bytes == 4 * 16 * 2**30
