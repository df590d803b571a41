"""Gateway settings for tests: loopback, free ports, the example repository as fallback."""

from __future__ import annotations

from typing import Any

from gateway.devfleet import LocalFleet
from gateway.settings import GatewaySettings, load_settings
from tests.support.models import MODEL_REPOSITORY


def gateway_settings(fleet: LocalFleet, **sections: dict[str, Any]) -> GatewaySettings:
    """Settings in front of every server of ``fleet``; ``sections`` override per section."""
    values: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "repository": {"path": str(MODEL_REPOSITORY)},
        "backends": [{"name": s.name, "address": s.address} for s in fleet.servers.values()],
    }
    for section, overrides in sections.items():
        values[section] = {**values.get(section, {}), **overrides}
    return load_settings(**values)
