"""grpc-timeout as clients send it on the wire, through tgw-edge and the calls it hands over.

grpc python clients cannot send a deadline of years, so the header is written by hand with h2.
grpc-timeout allows up to 8 digits of hours; such a deadline used to overflow when passed on as
the upstream call's timeout and fail at once with DEADLINE_EXCEEDED. It must mean "no
deadline" on every path: a call tgw-edge routes, a call it hands to the Python gateway that
asks one backend (ModelMetadata of a model no route covers) or all of them (RepositoryIndex,
ModelStatistics), and a ModelStreamInfer stream, whose messages tgw-edge routes one by one.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from tests.support.models import simple_arrays
from tests.support.raw_h2 import GrpcAnswer, H2Client, grpc_frame

HUGE = ["99999999H", "2562047H", "99999999M", "99999999S", "30S"]
SERVICE = "/inference.GRPCInferenceService"


def _call(address: str, path: str, body: bytes, timeout: str) -> GrpcAnswer:
    """One gRPC call over a fresh HTTP/2 connection (one request message, then the end of the
    stream), with the deadline as written."""
    with H2Client(address, timeout_s=30) as client:
        return client.call(path, grpc_frame(body), [("grpc-timeout", timeout)], timeout_s=30)


def _simple_request() -> tuple[service_pb2.ModelInferRequest, np.ndarray]:
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(values.tobytes())
    return request, a + b


def _output(response: service_pb2.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], np.int32)


@pytest.mark.parametrize("timeout", HUGE)
def test_a_huge_deadline_is_no_deadline(gateway_url: str, timeout: str) -> None:
    request, expected = _simple_request()
    body = request.SerializeToString()
    answer = _call(gateway_url, f"{SERVICE}/ModelInfer", body, timeout)
    assert answer.code == "OK", answer.describe()
    response = service_pb2.ModelInferResponse.FromString(answer.messages[0])
    assert np.array_equal(_output(response), expected[0])


@pytest.mark.parametrize("timeout", HUGE)
def test_a_huge_deadline_on_a_stream_is_no_deadline(gateway_url: str, timeout: str) -> None:
    request, expected = _simple_request()
    request.id = "stream-1"
    answer = _call(gateway_url, f"{SERVICE}/ModelStreamInfer", request.SerializeToString(), timeout)
    assert answer.code == "OK", answer.describe()
    (message,) = answer.messages
    streamed = service_pb2.ModelStreamInferResponse.FromString(message)
    assert streamed.error_message == ""
    assert streamed.infer_response.id == "stream-1"
    assert np.array_equal(_output(streamed.infer_response), expected[0])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("RepositoryIndex", service_pb2.RepositoryIndexRequest().SerializeToString()),
        ("ModelStatistics", service_pb2.ModelStatisticsRequest().SerializeToString()),
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name="simple").SerializeToString()),
    ],
    ids=["index", "statistics", "metadata"],
)
def test_a_huge_deadline_on_fleet_calls_is_no_deadline(
    gateway_url: str, path: str, body: bytes
) -> None:
    answer = _call(gateway_url, f"{SERVICE}/{path}", body, "99999999H")
    assert answer.code == "OK", answer.describe()
    assert answer.messages


def test_a_huge_deadline_on_a_handed_over_call_reaches_the_backend(gateway_url: str) -> None:
    # No route covers the model: the Python gateway asks a backend with the client's deadline,
    # and the client gets that backend's own answer, not DEADLINE_EXCEEDED.
    body = service_pb2.ModelMetadataRequest(name="no_such_model").SerializeToString()
    answer = _call(gateway_url, f"{SERVICE}/ModelMetadata", body, "99999999H")
    assert answer.code == "NOT_FOUND", answer.describe()
    assert "no_such_model" in answer.message
