"""Session fixtures: one real local Triton fleet and one in-process gateway for the whole run.

The fleet has two servers: ``triton-a`` serves every example model, ``triton-b`` serves only
``simple``, so routing by model is observable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.observability.logging import configure_logging
from gateway.settings import LoggingSettings, load_settings
from tests.support.background import BackgroundGateway

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TRITON_HOME = ROOT / ".triton"


@pytest.fixture(scope="session")
def triton_installation() -> TritonInstallation:
    # Not a skip: the suite is meaningless without real servers; `make test` installs them.
    return TritonInstallation.locate(TRITON_HOME)


@pytest.fixture(scope="session")
def fleet(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    specs = [ServerSpec("triton-a"), ServerSpec("triton-b", models=("simple",))]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as running:
        yield running


@pytest.fixture(scope="session")
def gateway(fleet: LocalFleet) -> Iterator[BackgroundGateway]:
    """The gateway (tgw-edge fronting the control plane), one for the whole run."""
    configure_logging(LoggingSettings(level="info", format="json"))
    settings = load_settings(
        server={"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 2},
        metrics={"host": "127.0.0.1", "port": 0},
        repository={"path": str(MODEL_REPOSITORY)},
        backends=[{"name": s.name, "address": s.address} for s in fleet.servers.values()],
        health={"poll_interval_s": 0.1, "poll_timeout_s": 1.0},
    )
    with BackgroundGateway(Gateway(settings)) as running:
        yield running


@pytest.fixture(scope="session")
def gateway_url(gateway: BackgroundGateway) -> str:
    return gateway.url
