"""The node's `HardwareProfile`: from a JSON file, the SDK's detectors, or a CPU-only fallback."""

from __future__ import annotations

import json
import os
import platform
import socket
from pathlib import Path

from llmd_sdk.hardware import CPUInfo, HardwareProfile
from pydantic import ValidationError


class HardwareError(Exception):
    pass


def _meminfo_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def fallback_profile() -> HardwareProfile:
    """CPU only, from the standard library: used when the SDK has no detector yet."""
    logical = os.cpu_count() or 1
    return HardwareProfile(
        hostname=socket.gethostname(),
        accelerator="cpu",
        devices=[],
        cpu=CPUInfo(
            model_name=platform.processor() or platform.machine() or "unknown",
            architecture=platform.machine() or "unknown",
            physical_cores=logical,
            logical_cores=logical,
            memory_total_bytes=_meminfo_bytes(),
            numa_nodes=1,
        ),
        detection={"all": "fallback: llmd_sdk.hardware.detect unavailable"},
    )


def load_profile(path: str | Path | None) -> HardwareProfile:
    """`path` (JSON of a HardwareProfile) when given, else detect this node."""
    if path is not None:
        p = Path(path)
        try:
            return HardwareProfile.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except OSError as exc:
            raise HardwareError(f"{p}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise HardwareError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise HardwareError(
                f"{p}: not a HardwareProfile: {loc}: {first['msg']} ({exc.error_count()} error(s))"
            ) from None
    try:
        from llmd_sdk import hardware as sdk_hardware

        detect = getattr(sdk_hardware, "detect", None)
        if detect is not None:
            profile = detect()
            if isinstance(profile, HardwareProfile):
                return profile
    except Exception:  # a detector bug must not stop the supervisor; fall back to CPU only
        pass
    return fallback_profile()
