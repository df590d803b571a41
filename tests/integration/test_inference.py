"""Inference through the gateway gives what Triton gives, routed by model and version."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import scrape_with_edge, total
from tests.support.models import (
    classifier_features,
    classifier_input,
    reference_classifier,
    simple_arrays,
    simple_inputs,
)


@pytest.fixture(scope="module")
def client(gateway_url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gateway_url)


def _direct(fleet: LocalFleet, name: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(fleet.servers[name].address)


def test_simple_matches_direct_triton(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    a, b = simple_arrays(batch=3, seed=1)
    via_gateway = client.infer("simple", simple_inputs(a, b))
    direct = _direct(fleet, "triton-a").infer("simple", simple_inputs(a, b))
    for output in ("OUTPUT0", "OUTPUT1"):
        assert np.array_equal(via_gateway.as_numpy(output), direct.as_numpy(output))
    assert np.array_equal(via_gateway.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(via_gateway.as_numpy("OUTPUT1"), a - b)
    assert via_gateway.get_response().model_name == "simple"
    assert via_gateway.get_response().model_version == "1"


@pytest.mark.parametrize("version", [1, 2])
def test_classifier_versions_route_to_their_weights(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet, version: int
) -> None:
    x = classifier_features(seed=version)
    via_gateway = client.infer("classifier", classifier_input(x), model_version=str(version))
    direct = _direct(fleet, "triton-a").infer(
        "classifier", classifier_input(x), model_version=str(version)
    )
    assert via_gateway.get_response().model_version == str(version)
    assert np.array_equal(via_gateway.as_numpy("PROBABILITIES"), direct.as_numpy("PROBABILITIES"))
    np.testing.assert_allclose(
        via_gateway.as_numpy("PROBABILITIES"), reference_classifier(version, x), atol=1e-6
    )


def test_versions_really_differ_and_default_is_latest(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = classifier_features(seed=5)
    v1 = client.infer("classifier", classifier_input(x), model_version="1")
    v2 = client.infer("classifier", classifier_input(x), model_version="2")
    latest = client.infer("classifier", classifier_input(x))
    assert not np.allclose(v1.as_numpy("PROBABILITIES"), v2.as_numpy("PROBABILITIES"))
    assert latest.get_response().model_version == "2"
    assert np.array_equal(latest.as_numpy("PROBABILITIES"), v2.as_numpy("PROBABILITIES"))


async def test_concurrent_requests_spread_across_backends(
    gateway_url: str, fleet: LocalFleet, gateway: BackgroundGateway
) -> None:
    # Alone, a request goes to the backend answering fastest; concurrent ones spread, since
    # calls in flight weigh on a backend's cost. Rounds of 32 until both served (at most 10).
    before = {name: inference_count(fleet, name, "simple") for name in fleet.servers}
    port = gateway.gateway.metrics_port
    hedged_before = total(scrape_with_edge(port), "triton_gateway_hedges_total", model="simple")
    a, b = simple_arrays()
    sent = 0
    async with aioclient.InferenceServerClient(gateway_url) as client:
        for _ in range(10):
            await asyncio.gather(*(client.infer("simple", simple_inputs(a, b)) for _ in range(32)))
            sent += 32
            delta = {n: inference_count(fleet, n, "simple") - before[n] for n in before}
            if all(count > 0 for count in delta.values()):
                break
    # Each call ran once, plus the second copies hedging sent of the slowest (a copy the
    # backend had started before the other answered runs to its end).
    hedged = total(scrape_with_edge(port), "triton_gateway_hedges_total", model="simple")
    assert sent <= sum(delta.values()) <= sent + hedged - hedged_before
    routes = gateway.gateway.pool.table.candidates.get(("simple", ""))
    assert all(count > 0 for count in delta.values()), (delta, routes)


def test_backend_without_a_model_never_receives_it(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    before = inference_count(fleet, "triton-a", "classifier")
    x = classifier_features()
    for _ in range(10):
        client.infer("classifier", classifier_input(x))
    # Every request succeeded, and all of them ran on the one server that has the model;
    # triton-b would have answered NOT_FOUND.
    assert inference_count(fleet, "triton-a", "classifier") - before == 10


async def test_aio_client_gets_the_same_answers(gateway_url: str, fleet: LocalFleet) -> None:
    a, b = simple_arrays(batch=2, seed=9)
    x = classifier_features(seed=9)
    async with aioclient.InferenceServerClient(gateway_url) as client:
        simple = await client.infer("simple", simple_inputs(a, b))
        classified = await client.infer("classifier", classifier_input(x), model_version="1")
    assert np.array_equal(simple.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(
        classified.as_numpy("PROBABILITIES"), reference_classifier(1, x), atol=1e-6
    )


async def test_stream_infer_answers_every_request_in_order(gateway_url: str) -> None:
    arrays = [simple_arrays(seed=seed) for seed in range(5)]

    async def requests():  # type: ignore[no-untyped-def]
        for index, (a, b) in enumerate(arrays):
            yield {"model_name": "simple", "inputs": simple_inputs(a, b), "request_id": str(index)}

    answers = []
    async with aioclient.InferenceServerClient(gateway_url) as client:
        async for result, error in client.stream_infer(requests()):
            assert error is None
            answers.append(result)
            if len(answers) == len(arrays):
                break
    assert [r.get_response().id for r in answers] == ["0", "1", "2", "3", "4"]
    for (a, b), result in zip(arrays, answers, strict=True):
        assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_sync_stream_infer(client: grpcclient.InferenceServerClient) -> None:
    results: list[object] = []
    a, b = simple_arrays(seed=3)
    client.start_stream(callback=lambda result, error: results.append(error or result))
    try:
        for index in range(3):
            client.async_stream_infer("simple", simple_inputs(a, b), request_id=str(index))
    finally:
        client.stop_stream()
    assert len(results) == 3
    assert all(isinstance(r, grpcclient.InferResult) for r in results)


def test_unknown_model_is_not_found_with_tritons_message(
    client: grpcclient.InferenceServerClient,
) -> None:
    a, b = simple_arrays()
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", simple_inputs(a, b))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "Request for unknown model: 'no_such_model' is not found"


def test_unknown_version_is_not_found_with_tritons_message(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("classifier", classifier_input(classifier_features()), model_version="7")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "Request for unknown model: 'classifier' version 7 is not found"


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param(
            lambda: simple_inputs(*(arr[:, :8] for arr in simple_arrays())), id="wrong-shape"
        ),
        pytest.param(
            lambda: [
                grpcclient.InferInput(name, [1, 16], "FP32").set_data_from_numpy(
                    np.zeros((1, 16), np.float32)
                )
                for name in ("INPUT0", "INPUT1")
            ],
            id="wrong-dtype",
        ),
        pytest.param(
            lambda: [
                simple_inputs(*simple_arrays())[0],
                grpcclient.InferInput("INPUT9", [1, 16], "INT32").set_data_from_numpy(
                    np.zeros((1, 16), np.int32)
                ),
            ],
            id="unknown-input",
        ),
        pytest.param(lambda: simple_inputs(*simple_arrays())[:1], id="missing-input"),
    ],
)
def test_client_errors_pass_through_as_invalid_argument(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet, inputs: object
) -> None:
    with pytest.raises(InferenceServerException) as via_gateway:
        client.infer("simple", inputs())  # type: ignore[operator]
    with pytest.raises(InferenceServerException) as direct:
        _direct(fleet, "triton-a").infer("simple", inputs())  # type: ignore[operator]
    assert via_gateway.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert via_gateway.value.message() == direct.value.message()


@pytest.mark.parametrize("sequence", [1234, 987654])
def test_requests_of_one_sequence_stay_on_one_backend(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet, sequence: int
) -> None:
    before = {name: inference_count(fleet, name, "simple") for name in fleet.servers}
    a, b = simple_arrays()
    for index in range(12):
        client.infer(
            "simple",
            simple_inputs(a, b),
            sequence_id=sequence,
            sequence_start=index == 0,
            sequence_end=index == 11,
        )
    delta = {name: inference_count(fleet, name, "simple") - before[name] for name in before}
    assert sorted(delta.values()) == [0, 12], delta
