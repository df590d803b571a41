"""Calls tgw-edge hands to the gateway after their backend failed (header x-gateway-tried).

These talk to the Python server's own private socket, as tgw-edge does: the backend named in the
header is never picked again, a sequence request is not moved to another backend, and a call whose
every candidate was tried goes to the local fallback. Without tgw-edge the header could only
come from a client, and is ignored.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import requests_total
from tests.support.models import (
    classifier_features,
    classifier_input,
    reference_classifier,
    simple_arrays,
    simple_inputs,
)

TRIED = "x-gateway-tried"


@pytest.fixture
def python_server(gateway: BackgroundGateway) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gateway.gateway.private_address)


@pytest.fixture
def behind_edge(gateway: BackgroundGateway) -> bool:
    return gateway.gateway.settings.edge.mode == "on"


def test_the_tried_backend_is_not_picked_again(
    python_server: grpcclient.InferenceServerClient, fleet: LocalFleet, behind_edge: bool
) -> None:
    before = {name: inference_count(fleet, name, "simple") for name in fleet.servers}
    a, b = simple_arrays()
    for _ in range(8):
        result = python_server.infer("simple", simple_inputs(a, b), headers={TRIED: "triton-b"})
        assert (result.as_numpy("OUTPUT0") == a + b).all()
    served = {name: inference_count(fleet, name, "simple") - before[name] for name in before}
    assert sum(served.values()) == 8
    if behind_edge:
        assert served["triton-b"] == 0


def test_a_handed_over_sequence_request_is_not_moved_to_another_backend(
    python_server: grpcclient.InferenceServerClient, fleet: LocalFleet, behind_edge: bool
) -> None:
    before = {name: inference_count(fleet, name, "simple") for name in fleet.servers}
    a, b = simple_arrays()

    def send() -> grpcclient.InferResult:
        return python_server.infer(
            "simple", simple_inputs(a, b), sequence_id=77, headers={TRIED: "triton-b"}
        )

    if not behind_edge:
        # No tgw-edge: the header can only be a client's, and changes nothing.
        assert (send().as_numpy("OUTPUT0") == a + b).all()
        return
    with pytest.raises(InferenceServerException) as info:
        send()
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "sequence" in (info.value.message() or "")
    # Nor did the local fallback answer it: nothing ran anywhere.
    assert {name: inference_count(fleet, name, "simple") for name in fleet.servers} == before


def test_a_call_whose_only_backend_was_tried_is_answered_by_the_fallback(
    python_server: grpcclient.InferenceServerClient, gateway: BackgroundGateway, behind_edge: bool
) -> None:
    port = gateway.gateway.metrics_port
    answered_locally = requests_total(port, path="fallback", model="classifier", code="OK")
    x = classifier_features(seed=3)
    result = python_server.infer("classifier", classifier_input(x), headers={TRIED: "triton-a"})
    # Only triton-a has classifier: the local ONNX Runtime session answered, like Triton would.
    np.testing.assert_allclose(
        result.as_numpy("PROBABILITIES"), reference_classifier(2, x), atol=1e-5
    )
    assert result.get_response().model_version == "2"
    # Behind tgw-edge the local fallback answered (triton-a was tried); otherwise triton-a.
    assert requests_total(port, path="fallback", model="classifier", code="OK") == (
        answered_locally + (1 if behind_edge else 0)
    )
