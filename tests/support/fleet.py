"""Local fleets for tests: questions asked of their servers directly, and own fleets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from tests.support.background import BackgroundGateway
from tests.support.models import MODEL_REPOSITORY
from tests.support.settings import gateway_settings


def inference_count(fleet: LocalFleet, server: str, model: str) -> int:
    """Successful requests (not batch items) the server has run for ``model``."""
    client = grpcclient.InferenceServerClient(fleet.servers[server].address)
    stats = client.get_inference_statistics(model)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


@contextmanager
def fleet_behind_gateway(
    installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    servers: Mapping[str, tuple[str, ...]],
    **sections: dict[str, Any],
) -> Iterator[tuple[LocalFleet, BackgroundGateway]]:
    """A fleet of its own (server name → models) with a gateway in front, for a test that
    kills, hangs or changes servers; ``sections`` override gateway settings."""
    specs = [ServerSpec(name, models=models) for name, models in servers.items()]
    fleet_dir = tmp_path_factory.mktemp("fleet")
    with (
        LocalFleet(installation, MODEL_REPOSITORY, fleet_dir, specs) as fleet,
        BackgroundGateway(Gateway(gateway_settings(fleet, **sections))) as gateway,
    ):
        yield fleet, gateway
