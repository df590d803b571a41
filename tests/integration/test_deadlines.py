"""grpc-timeout as clients send it on the wire, through the Python data path.

grpc python clients cannot send a deadline of years, so the header is written by hand with h2.
grpc-timeout allows up to 8 digits of hours; such a deadline used to overflow when passed on as
the upstream call's timeout and fail at once with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.models import simple_arrays
from tests.support.settings import gateway_settings

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")
from tritonclient.grpc import service_pb2  # noqa: E402


@pytest.fixture(scope="module")
def python_path(fleet: LocalFleet) -> Iterator[int]:
    with BackgroundGateway(Gateway(gateway_settings(fleet, edge={"mode": "off"}))) as gateway:
        yield gateway.gateway.port


def _call(port: int, path: str, body: bytes, timeout: str) -> tuple[dict[bytes, bytes], bytes]:
    """One unary gRPC call over a fresh HTTP/2 connection; (headers and trailers, message)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        connection = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
        connection.initiate_connection()
        connection.send_headers(
            1,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", timeout),
            ],
        )
        connection.send_data(1, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
        sock.sendall(connection.data_to_send())
        headers: dict[bytes, bytes] = {}
        data = b""
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in connection.receive_data(chunk):
                if isinstance(event, h2_events.ResponseReceived | h2_events.TrailersReceived):
                    headers.update(dict(event.headers))
                elif isinstance(event, h2_events.DataReceived):
                    data += event.data
                    connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2_events.StreamEnded):
                    ended = True
            sock.sendall(connection.data_to_send())
    return headers, data[5:]


def _simple_request() -> tuple[bytes, np.ndarray]:
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString(), a + b


@pytest.mark.parametrize("timeout", ["99999999H", "2562047H", "99999999M", "99999999S", "30S"])
def test_a_huge_deadline_is_no_deadline(python_path: int, timeout: str) -> None:
    body, expected = _simple_request()
    headers, message = _call(
        python_path, "/inference.GRPCInferenceService/ModelInfer", body, timeout
    )
    assert headers.get(b"grpc-status") == b"0", headers
    response = service_pb2.ModelInferResponse.FromString(message)
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
    python_path: int, path: str, body: bytes
) -> None:
    headers, _ = _call(python_path, f"/inference.GRPCInferenceService/{path}", body, "99999999H")
    assert headers.get(b"grpc-status") == b"0", headers
