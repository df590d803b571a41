"""A request that crashes every server it reaches (a "query of death") takes down at most two.

The crash is real: Triton 2.51 (the local fleet's) dies with SIGSEGV when a `classification`
is asked of a BYTES output of a model its Python backend serves (here `strings`). Retried on
each backend after a broken connection, one such call took down the whole fleet; tgw-edge now
makes one more try after a connection broken under a call, not two.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.devfleet import LocalFleet, TritonInstallation
from tests.support.background import BackgroundGateway
from tests.support.fleet import fleet_behind_gateway
from tests.support.metrics import wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVERS = ("qod-a", "qod-b", "qod-c")


@pytest.fixture
def three_servers(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalFleet, BackgroundGateway]]:
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        dict.fromkeys(SERVERS, ("strings",)),
        fallback={"enabled": False},
    ) as running:
        yield running


def _strings_request(classification: bool) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="strings", id="q")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(b"hi").to_bytes(4, "little") + b"hi")
    if classification:
        request.outputs.add(name="UPPER").parameters["classification"].int64_param = 1
    return bytes(request.SerializeToString())


def _alive(fleet: LocalFleet, name: str) -> bool:
    process = fleet.servers[name].process
    return process is not None and process.poll() is None


def test_a_request_that_crashes_its_server_takes_down_at_most_two(
    three_servers: tuple[LocalFleet, BackgroundGateway],
) -> None:
    fleet, gateway = three_servers
    infer = grpc.insecure_channel(gateway.url).unary_unary(INFER)
    with pytest.raises(grpc.RpcError) as info:
        infer(_strings_request(classification=True), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert wait_until(lambda: sum(not _alive(fleet, name) for name in SERVERS) >= 1, 10)
    survivors = [name for name in SERVERS if _alive(fleet, name)]
    assert len(survivors) >= 1, "every server of the fleet died of one request"
    # The fleet left still serves the model.
    answer = service_pb2.ModelInferResponse.FromString(
        infer(_strings_request(classification=False), timeout=30)
    )
    assert answer.raw_output_contents[0].endswith(b"HI")


def test_on_a_stream_too(three_servers: tuple[LocalFleet, BackgroundGateway]) -> None:
    fleet, gateway = three_servers
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway.url))
    crashing = service_pb2.ModelInferRequest.FromString(_strings_request(classification=True))
    answers = list(stub.ModelStreamInfer(iter([crashing]), timeout=30))
    # Reported in the stream as Triton reports a failed request; the stream ends OK.
    assert [(a.infer_response.id, bool(a.error_message)) for a in answers] == [("q", True)]
    assert wait_until(lambda: sum(not _alive(fleet, name) for name in SERVERS) >= 1, 10)
    assert [name for name in SERVERS if _alive(fleet, name)], "every server died of one request"
