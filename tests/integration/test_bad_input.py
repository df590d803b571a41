"""Malformed and hostile requests get a clear status and never hurt the gateway."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.models import simple_arrays, simple_inputs
from tests.support.settings import gateway_settings

INFER = "/inference.GRPCInferenceService/ModelInfer"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
}

tensors = st.builds(
    lambda name, datatype, shape: service_pb2.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape
    ),
    st.sampled_from(["INPUT0", "INPUT1", "INPUT9", ""]),
    st.sampled_from(["INT32", "FP32", "BYTES", "BOGUS", ""]),
    st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=4),
)
requests = st.builds(
    lambda name, version, inputs, raw: service_pb2.ModelInferRequest(
        model_name=name, model_version=version, inputs=inputs, raw_input_contents=raw
    ).SerializeToString(),
    st.sampled_from(["simple", "classifier", "nope", ""]),
    st.sampled_from(["", "1", "2", "x"]),
    st.lists(tensors, max_size=3),
    st.lists(st.binary(max_size=128), max_size=3),
)


@pytest.fixture(scope="module")
def raw_infer(gateway: BackgroundGateway) -> grpc.UnaryUnaryMultiCallable:
    return grpc.insecure_channel(gateway.url).unary_unary(INFER)


def _status(call: grpc.UnaryUnaryMultiCallable, payload: bytes) -> grpc.StatusCode:
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=256))
def test_random_bytes_get_a_valid_status(
    raw_infer: grpc.UnaryUnaryMultiCallable, payload: bytes
) -> None:
    assert _status(raw_infer, payload) in ALLOWED


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=requests)
def test_wellformed_but_wrong_requests_get_client_errors(
    raw_infer: grpc.UnaryUnaryMultiCallable, payload: bytes
) -> None:
    code = _status(raw_infer, payload)
    # Nothing in these requests is a backend fault: no UNAVAILABLE, no INTERNAL. (A generated
    # request can happen to be valid, hence OK.)
    assert code in {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }, code


def test_gateway_still_serves_after_the_fuzzing(gateway: BackgroundGateway) -> None:
    a, b = simple_arrays()
    result = grpcclient.InferenceServerClient(gateway.url).infer("simple", simple_inputs(a, b))
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_an_oversized_message_is_refused_and_the_gateway_keeps_serving(fleet: LocalFleet) -> None:
    settings = gateway_settings(fleet, server={"max_message_bytes": 64 * 1024})
    with BackgroundGateway(Gateway(settings)) as gateway:
        client = grpcclient.InferenceServerClient(gateway.url)
        big = np.zeros(32 * 1024, dtype=np.float32)  # 128 KiB of tensor data
        tensor = grpcclient.InferInput("INPUT", list(big.shape), "FP32")
        tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as info:
            client.infer("identity", [tensor])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in (info.value.message() or "")
        a, b = simple_arrays()
        result = client.infer("simple", simple_inputs(a, b))
        assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
