"""grpc-timeout as clients send it on the wire, through the Python data path.

grpc python clients cannot send a deadline of years, so the header is written by hand with h2.
grpc-timeout allows up to 8 digits of hours; such a deadline used to overflow when passed on as
the upstream call's timeout and fail at once with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.models import simple_arrays
from tests.support.raw_h2 import GrpcAnswer, H2Client, grpc_frame
from tests.support.settings import gateway_settings


@pytest.fixture(scope="module")
def python_path(fleet: LocalFleet) -> Iterator[str]:
    with BackgroundGateway(Gateway(gateway_settings(fleet, edge={"mode": "off"}))) as gateway:
        yield gateway.url


def _call(address: str, path: str, body: bytes, timeout: str) -> GrpcAnswer:
    """One unary gRPC call over a fresh HTTP/2 connection, with the deadline as written."""
    with H2Client(address, timeout_s=30) as client:
        return client.call(path, grpc_frame(body), [("grpc-timeout", timeout)], timeout_s=30)


def _simple_request() -> tuple[bytes, np.ndarray]:
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString(), a + b


@pytest.mark.parametrize("timeout", ["99999999H", "2562047H", "99999999M", "99999999S", "30S"])
def test_a_huge_deadline_is_no_deadline(python_path: str, timeout: str) -> None:
    body, expected = _simple_request()
    answer = _call(python_path, "/inference.GRPCInferenceService/ModelInfer", body, timeout)
    assert answer.code == "OK", answer.describe()
    response = service_pb2.ModelInferResponse.FromString(answer.messages[0])
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32), expected[0])


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
    python_path: str, path: str, body: bytes
) -> None:
    answer = _call(python_path, f"/inference.GRPCInferenceService/{path}", body, "99999999H")
    assert answer.code == "OK", answer.describe()
