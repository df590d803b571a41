"""Compressed requests (``grpc-encoding`` gzip and deflate, and the compressed flag without
one), answered through the gateway as triton-a answers them directly: the same status and
message, the same answer messages, on unary calls (routed and the gateway's own) and on a
stream. Raw HTTP/2 calls: gRPC clients never send a compressed flag without its encoding, or
bytes that do not inflate."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest
from tritonclient.grpc import service_pb2

from gateway.devfleet import LocalFleet
from tests.support.models import simple_arrays
from tests.support.raw_h2 import GrpcAnswer, H2Client, grpc_frame

SERVICE = "/inference.GRPCInferenceService"
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


def _simple_request(request_id: str = "", model: str = "simple") -> bytes:
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(values.tobytes())
    return bytes(request.SerializeToString())


def _unary(address: str, method: str, body: bytes, metadata: list[tuple[str, str]]) -> GrpcAnswer:
    with H2Client(address, timeout_s=30) as client:
        return client.call(f"{SERVICE}/{method}", body, metadata, timeout_s=30)


def _both(
    fleet: LocalFleet, gateway_url: str, method: str, body: bytes, metadata: list[tuple[str, str]]
) -> tuple[GrpcAnswer, GrpcAnswer]:
    direct = _unary(fleet.servers["triton-a"].address, method, body, metadata)
    return direct, _unary(gateway_url, method, body, metadata)


@pytest.mark.parametrize("encoding", [None, "identity"])
@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("ModelInfer", _simple_request()),
        ("ModelInfer", _simple_request(model="no_such_model")),
        ("ModelReady", service_pb2.ModelReadyRequest(name="simple").SerializeToString()),
        ("ServerMetadata", b""),
        ("ModelStatistics", service_pb2.ModelStatisticsRequest(name="simple").SerializeToString()),
    ],
    ids=["infer", "unknown-model", "ready", "server-metadata", "statistics"],
)
def test_a_compressed_flag_without_an_encoding_is_read_as_plain(
    fleet: LocalFleet, gateway_url: str, encoding: str | None, method: str, message: bytes
) -> None:
    metadata = [("grpc-encoding", encoding)] if encoding else []
    body = grpc_frame(message, compressed=True)
    direct, through = _both(fleet, gateway_url, method, body, metadata)
    assert (through.code, through.message) == (direct.code, direct.message)
    assert len(through.messages) == len(direct.messages)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("ModelInfer", _simple_request()),
        ("ModelStatistics", service_pb2.ModelStatisticsRequest(name="simple").SerializeToString()),
    ],
    ids=["infer", "statistics"],
)
def test_bytes_that_do_not_inflate_get_tritons_refusal(
    fleet: LocalFleet, gateway_url: str, encoding: str, method: str, message: bytes
) -> None:
    truncated = COMPRESSORS[encoding](message)[:-6]
    body = grpc_frame(truncated, compressed=True)
    direct, through = _both(fleet, gateway_url, method, body, [("grpc-encoding", encoding)])
    assert direct.code == "INTERNAL"
    assert (through.code, through.message) == (direct.code, direct.message)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_stream_messages_are_answered_as_triton_answers_them(
    fleet: LocalFleet, gateway_url: str, encoding: str
) -> None:
    """A routed message, one for a model no one serves and one with a version Triton cannot
    read (both answered by the gateway in Triton's words): every answer carries its request's
    id, whoever wrote it."""
    requests = [
        _simple_request("routed"),
        _simple_request("unknown", model="no_such_model"),
        service_pb2.ModelInferRequest(
            model_name="simple", model_version="x", id="unreadable"
        ).SerializeToString(),
    ]
    body = b"".join(grpc_frame(COMPRESSORS[encoding](r), compressed=True) for r in requests)

    def answers(address: str) -> tuple[dict[str, str], list[service_pb2.ModelStreamInferResponse]]:
        with H2Client(address, timeout_s=30) as client:
            answer = client.call(
                f"{SERVICE}/ModelStreamInfer", body, [("grpc-encoding", encoding)], timeout_s=30
            )
        assert answer.code == "OK", answer.describe()
        head = {k: v for k, v in answer.headers.items() if k != "date"}
        return head, [service_pb2.ModelStreamInferResponse.FromString(m) for m in answer.messages]

    direct_head, direct = answers(fleet.servers["triton-a"].address)
    head, through = answers(gateway_url)
    assert head == direct_head  # the encodings accepted included
    assert [a.infer_response.id for a in direct] == ["routed", "unknown", "unreadable"]
    assert [(a.error_message, a.infer_response.id) for a in through] == [
        (a.error_message, a.infer_response.id) for a in direct
    ]
    routed, expected = through[0].infer_response, direct[0].infer_response
    assert routed.raw_output_contents == expected.raw_output_contents
