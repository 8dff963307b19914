"""Loopback ports: find free ones, and say clearly which configured one is taken."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable


class PortInUseError(OSError):
    """A port the stack needs is taken; the message is one line naming it and its field."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free right now (held open together so none is handed out twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports(host: str, ports: Iterable[tuple[str, int]], source: str = "config") -> None:
    """Raise `PortInUseError` for the first (field, port) that cannot be bound on `host`."""
    for field, port in ports:
        if port and not port_is_free(host, port):
            raise PortInUseError(
                f"port {port} on {host} ({field}) is in use: stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'`) or change {field} in {source}"
            )


def wait_port_closed(host: str, port: int) -> bool:
    """True if nothing accepts connections on host:port."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        with contextlib.suppress(OSError):
            s.connect((host, port))
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
