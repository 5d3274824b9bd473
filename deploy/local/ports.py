"""Before `make up` starts anything: every port it will bind must be free and its own."""
import socket
from dataclasses import fields

from deploy.local.config import port_setting
from deploy.local.mesh import MeshPorts


class PortsUnavailable(Exception):
    """A port `make up` needs is taken; the message names it and the setting that moves it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests and benchmarks that run beside a mesh)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As a server binds: a port a process just left in TIME_WAIT counts as free, one that
        # something listens on (on this address or on all of them) does not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(host: str, ports: MeshPorts) -> None:
    """Raises PortsUnavailable naming every port that is shared or in use, and its setting."""
    named = {field.name: getattr(ports, field.name) for field in fields(ports)}
    problems, owner = [], {}
    for name, port in named.items():
        if port in owner:
            problems.append(f"{port_setting(owner[port])} and {port_setting(name)} are both "
                            f"{port}: give each its own port")
        owner.setdefault(port, name)
    for name, port in named.items():
        if not port_is_free(host, port):
            problems.append(f"port {port} ({name}) is already in use on {host} (another "
                            f"program, or a meshllm already running): stop it, or set "
                            f"{port_setting(name)} to a free port")
    if problems:
        raise PortsUnavailable("; ".join(problems))
