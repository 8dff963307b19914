"""What one vendor detector found, and how."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmd_sdk.hardware.profile import AcceleratorDevice


@dataclass
class Probe:
    """Devices of one vendor and a line saying how they were found ("nvml", "sysfs", ...) or
    why none were ("absent: ...")."""

    detection: str
    devices: list[AcceleratorDevice] = field(default_factory=list)

    @classmethod
    def absent(cls, *reasons: str) -> Probe:
        return cls("absent: " + "; ".join(r for r in reasons if r))


def describe_error(exc: BaseException) -> str:
    """One line for an exception: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
