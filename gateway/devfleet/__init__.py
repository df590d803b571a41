"""Real local Triton servers for development, demos and tests (no GPU needed)."""

from gateway.devfleet.errors import FleetError
from gateway.devfleet.fleet import LocalFleet, ServerSpec, ServerTls, TritonServer
from gateway.devfleet.installation import TritonInstallation

__all__ = [
    "FleetError",
    "LocalFleet",
    "ServerSpec",
    "ServerTls",
    "TritonInstallation",
    "TritonServer",
]
