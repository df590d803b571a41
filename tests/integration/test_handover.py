"""Calls tgw-edge hands to the gateway after their backends failed (header x-gateway-tried).

tgw-edge retries and hedges within its own policy; a call it hands over marked with the
backends that failed it is its last resort. These tests talk to the Python server's private
socket, as tgw-edge does, to exercise the hand-over rules: such a call is answered by the local
fallback and never sent to the fleet again, a sequence's request is neither moved to another
backend nor answered by the fallback (its state is on the backend that failed), and the
header is the edge's alone: one a client sends through the public port is removed.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import requests_total, wait_until
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


def _fleet_counts(fleet: LocalFleet, model: str) -> dict[str, int]:
    return {name: inference_count(fleet, name, model) for name in fleet.servers}


def test_a_handed_over_call_is_not_sent_to_the_fleet_again(
    python_server: grpcclient.InferenceServerClient, fleet: LocalFleet, gateway: BackgroundGateway
) -> None:
    # triton-a also has simple and was not tried: the edge's retry decision stands (budget,
    # attempts, deadline), the gateway adds no try of its own; the local fallback answers.
    port = gateway.gateway.metrics_port
    answered_locally = requests_total(port, path="fallback", model="simple", code="OK")
    before = _fleet_counts(fleet, "simple")
    a, b = simple_arrays()
    for _ in range(8):
        result = python_server.infer("simple", simple_inputs(a, b), headers={TRIED: "triton-b"})
        assert (result.as_numpy("OUTPUT0") == a + b).all()
    assert _fleet_counts(fleet, "simple") == before
    assert requests_total(port, path="fallback", model="simple", code="OK") == (
        answered_locally + 8
    )


def test_a_handed_over_sequence_request_is_not_moved_to_another_backend(
    python_server: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    before = _fleet_counts(fleet, "simple")
    a, b = simple_arrays()
    with pytest.raises(InferenceServerException) as info:
        python_server.infer(
            "simple", simple_inputs(a, b), sequence_id=77, headers={TRIED: "triton-b"}
        )
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "sequence" in (info.value.message() or "")
    # Nor did the local fallback answer it: nothing ran anywhere.
    assert _fleet_counts(fleet, "simple") == before


def test_a_call_whose_only_backend_was_tried_is_answered_by_the_fallback(
    python_server: grpcclient.InferenceServerClient, gateway: BackgroundGateway
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
    assert requests_total(port, path="fallback", model="classifier", code="OK") == (
        answered_locally + 1
    )


def test_the_header_from_a_client_is_removed_by_the_edge(
    gateway: BackgroundGateway, fleet: LocalFleet
) -> None:
    port = gateway.gateway.metrics_port
    answered_locally = requests_total(port, path="fallback", model="classifier", code="OK")
    ran_on_a = inference_count(fleet, "triton-a", "classifier")
    x = classifier_features(seed=4)
    client = grpcclient.InferenceServerClient(gateway.url)
    result = client.infer("classifier", classifier_input(x), headers={TRIED: "triton-a"})
    np.testing.assert_allclose(
        result.as_numpy("PROBABILITIES"), reference_classifier(2, x), atol=1e-5
    )
    # triton-a ran it: a client cannot send its calls to the fallback (or skip backends).
    assert wait_until(lambda: inference_count(fleet, "triton-a", "classifier") == ran_on_a + 1)
    assert requests_total(port, path="fallback", model="classifier", code="OK") == (
        answered_locally
    )
