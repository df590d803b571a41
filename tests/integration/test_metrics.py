"""Every metric moves when its event happens, scraped over HTTP from the running gateway."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT
from tests.support.background import BackgroundGateway
from tests.support.metrics import exported_names, requests_total, scrape, value, wait_until
from tests.support.models import simple_arrays, simple_inputs


def test_successful_requests_are_counted_with_latency(gateway: BackgroundGateway) -> None:
    port = gateway.gateway.metrics_port
    # Version "1" spelled out: a series no other test touches.
    series = {
        "path": "edge",
        "method": "ModelInfer",
        "model": "simple",
        "version": "1",
        "code": "OK",
    }
    before = requests_total(port, **series)
    client = grpcclient.InferenceServerClient(gateway.url)
    a, b = simple_arrays()
    for _ in range(6):
        client.infer("simple", simple_inputs(a, b), model_version="1")
    assert wait_until(lambda: requests_total(port, **series) >= before + 6)
    assert requests_total(port, **series) == before + 6
    # Each backend's series (one lone call after another may all go to the faster backend)
    # has a matching histogram, and together they count every call.
    counts = []
    for backend in ("triton-a", "triton-b"):
        labels = {**series, "backend": backend}
        count = value(port, "triton_gateway_requests_total", labels)
        counts.append(count)
        assert value(port, "triton_gateway_request_duration_seconds_count", labels) == count
        inf_bucket = {**labels, "le": "+Inf"}
        assert value(port, "triton_gateway_request_duration_seconds_bucket", inf_bucket) == count
    assert sum(counts) == before + 6


def test_client_errors_are_counted_by_status(gateway: BackgroundGateway) -> None:
    port = gateway.gateway.metrics_port
    series = {"path": "edge", "model": "simple", "version": "1", "code": "INVALID_ARGUMENT"}
    before = requests_total(port, **series)
    client = grpcclient.InferenceServerClient(gateway.url)
    a, b = simple_arrays()
    with pytest.raises(InferenceServerException):
        client.infer("simple", simple_inputs(a[:, :8], b[:, :8]), model_version="1")
    assert wait_until(lambda: requests_total(port, **series) >= before + 1)
    assert requests_total(port, **series) == before + 1


def test_unknown_models_share_one_series(gateway: BackgroundGateway) -> None:
    port = gateway.gateway.metrics_port
    # Calls without a route are always answered by the Python gateway.
    series = {"path": "python", "model": "_unknown", "code": "NOT_FOUND"}
    before = requests_total(port, **series)
    client = grpcclient.InferenceServerClient(gateway.url)
    a, b = simple_arrays()
    for name in ("no_such_model_1", "no_such_model_2"):
        with pytest.raises(InferenceServerException):
            client.infer(name, simple_inputs(a, b))
    assert requests_total(port, **series) == before + 2
    assert not any("no_such_model" in str(labels) for _, labels in scrape(port))


def test_backend_gauges(gateway: BackgroundGateway) -> None:
    port = gateway.gateway.metrics_port
    assert value(port, "triton_gateway_backend_up", {"backend": "triton-a"}) == 1
    assert value(port, "triton_gateway_backend_up", {"backend": "triton-b"}) == 1
    # triton-a: accumulator, classifier 1 and 2, identity, int8_add, repeat, simple, strings.
    assert value(port, "triton_gateway_backend_ready_model_versions", {"backend": "triton-a"}) == 8
    assert value(port, "triton_gateway_backend_ready_model_versions", {"backend": "triton-b"}) == 1
    assert value(port, "triton_gateway_in_flight_requests", {"path": "python"}) == 0


def test_dashboard_uses_only_exported_metrics(gateway: BackgroundGateway) -> None:
    a, b = simple_arrays()
    grpcclient.InferenceServerClient(gateway.url).infer("simple", simple_inputs(a, b))
    dashboard = (ROOT / "deploy" / "grafana" / "triton-gateway.json").read_text()
    used = set(re.findall(r"triton_gateway_[a-z_]+", dashboard))
    port = gateway.gateway.metrics_port
    assert wait_until(lambda: requests_total(port, model="simple") > 0)
    exported = exported_names(port)
    assert used
    assert used <= exported, used - exported
    # Every panel has an id of its own (Grafana keys links and state on it), and latency
    # panels show inference calls only (not health checks or metadata calls).
    panels: list[dict[str, Any]] = []
    pending = list(json.loads(dashboard)["panels"])
    while pending:
        panel = pending.pop()
        panels.append(panel)
        pending.extend(panel.get("panels", []))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        for target in panel.get("targets", []):
            if "triton_gateway_request_duration_seconds" in target.get("expr", ""):
                assert 'method=~"ModelInfer|ModelStreamInfer"' in target["expr"], panel["title"]
