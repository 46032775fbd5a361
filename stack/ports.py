"""Free TCP ports for servers started on this machine (the local stack, the tests), from
below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``): a port handed out
by ``bind(0)`` comes from that range, where any outgoing connection (a Kafka client's)
may take it between the choice and the server's bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from common.settings import StackSettings

LOWEST = 20000  # above the well-known and registered services people run by hand
_DEFAULT_EPHEMERAL_LOW = 32768


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port no server listens on, outside the ephemeral range (any free port if the
    range leaves no room below it)."""
    high = ephemeral_low()
    if high - LOWEST >= 1000:
        for _ in range(200):
            port = random.randrange(LOWEST, high)
            if port_free(port, host):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pick_port(name: str) -> int:
    """STACK_<NAME>_PORT (by default the conventional port) if it is free, else any free port."""
    wanted = getattr(StackSettings(), f"stack_{name}_port")
    if wanted and port_free(wanted):
        return wanted
    return free_port()
