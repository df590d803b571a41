"""Draining one backend by saving the config file: no new requests reach it; undrain restores."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.metrics import value, wait_until


def _write(path: Path, fleet: LocalFleet, drained: set[str]) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "edge": {"mode": "off"},
        "fallback": {"repository": str(MODEL_REPOSITORY)},
        "health": {"poll_interval_s": 0.2},
        "backends": [
            {"name": s.name, "address": s.address, "drained": s.name in drained}
            for s in fleet.servers.values()
        ],
    }
    path.write_text(yaml.safe_dump(config))


def test_drain_and_restore_a_backend_by_config_reload(fleet: LocalFleet, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    _write(config, fleet, drained=set())
    gateway = Gateway(load_settings(config), config_path=config)
    with BackgroundGateway(gateway) as running:
        pool = running.gateway.pool
        port = running.gateway.metrics_port

        def routes() -> set[str]:
            return {b.name for b in pool.table.candidates.get(("simple", ""), ())}

        assert wait_until(lambda: routes() == {"triton-a", "triton-b"})
        _write(config, fleet, drained={"triton-b"})
        assert wait_until(lambda: routes() == {"triton-a"})
        assert value(port, "triton_gateway_backend_drained", {"backend": "triton-b"}) == 1
        _write(config, fleet, drained=set())
        assert wait_until(lambda: routes() == {"triton-a", "triton-b"})
        assert value(port, "triton_gateway_backend_drained", {"backend": "triton-b"}) == 0
        # After a broken save (rejected, the last good state serves) the watch goes on.
        config.write_text("backends: [ {name: oops\n")
        _write(config, fleet, drained={"triton-a"})
        assert wait_until(lambda: routes() == {"triton-b"})
