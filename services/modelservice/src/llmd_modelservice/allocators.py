"""Local ports and accelerator devices handed to replicas, returned when they go away."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class PortAllocator:
    """First port at or above a base that we do not hold and that binds right now.

    Base 0 asks the kernel for a free port. Another process may still take a port between the
    probe and the engine's bind; the engine then fails to start and is restarted like any crash.
    """

    def __init__(self, *, probe: bool = True) -> None:
        self._held: set[int] = set()
        self._probe = probe

    def take(self, base: int, host: str = "127.0.0.1") -> int:
        if base == 0:
            while True:
                port = _ephemeral(host)
                if port not in self._held:
                    self._held.add(port)
                    return port
        port = base
        while port <= 65535:
            if port not in self._held and (not self._probe or _bindable(host, port)):
                self._held.add(port)
                return port
            port += 1
        raise RuntimeError(f"no free port at or above {base}")

    def release(self, port: int | None) -> None:
        if port is not None:
            self._held.discard(port)


class DeviceAllocationError(Exception):
    pass


class DeviceAllocator:
    """Lowest free device indices of the node's accelerators."""

    def __init__(self, devices: Iterable[int]) -> None:
        self._all = sorted(devices)
        self._held: set[int] = set()

    @property
    def free(self) -> int:
        return len(self._all) - len(self._held)

    def take(self, n: int) -> tuple[int, ...]:
        if n == 0:
            return ()
        free = [d for d in self._all if d not in self._held]
        if len(free) < n:
            raise DeviceAllocationError(
                f"needs {n} device(s), {len(free)} free of {len(self._all)}"
            )
        got = tuple(free[:n])
        self._held.update(got)
        return got

    def release(self, devices: Iterable[int]) -> None:
        self._held.difference_update(devices)
