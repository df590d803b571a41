"""The public port's listening socket, owned by the control plane and lent to each edge.

tgw-edge serves on the socket it inherits (``--listen-fd``). The control plane keeps its own
copy open, so while a dead edge is being replaced the port still accepts connections into its
backlog: clients wait a few milliseconds for the new edge instead of being refused (and then
waiting out gRPC's reconnect backoff, a second or more).
"""

from __future__ import annotations

import socket

from gateway.control.errors import ControlError
from gateway.control.ports import taken

BACKLOG = 1024


class PublicPortError(ControlError):
    """The public port cannot be bound."""


def bind_public(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise PublicPortError(f"cannot resolve server.host {host!r}: {exc}") from exc
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        raise PublicPortError(taken("the public port", host, port, exc, "server.port")) from exc
    return listener


def bound_port(listener: socket.socket) -> int:
    port: int = listener.getsockname()[1]
    return port
