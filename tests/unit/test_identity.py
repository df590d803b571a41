"""The gateway's own identity: a --version and a build-info metric, never ServerMetadata
(which answers with the fleet's, as Triton does)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.cli import main
from gateway.observability.metrics import RequestMetrics


def test_version_prints_the_gateways_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"triton-gateway {__version__}\n"


def test_build_info_names_the_version() -> None:
    registry = CollectorRegistry()
    RequestMetrics(registry)
    labels = {"version": __version__}
    assert registry.get_sample_value("triton_gateway_build_info", labels) == 1
