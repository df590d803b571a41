import grpc
import pytest
from tritonclient.grpc import service_pb2

from gateway.errors import UnparsableRequestError
from gateway.routing.wire import read_model_key


def _infer_request(**fields: object) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(**fields)
    tensor = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    tensor.parameters["binary_data_size"].int64_param = 64
    request.raw_input_contents.append(bytes(64))
    request.parameters["sequence_id"].int64_param = 7
    return request


def test_reads_name_and_version_of_an_infer_request() -> None:
    data = _infer_request(model_name="classifier", model_version="2", id="r1").SerializeToString()
    assert read_model_key(data) == ("classifier", "2")


def test_missing_version_reads_as_empty() -> None:
    assert read_model_key(_infer_request(model_name="simple").SerializeToString()) == ("simple", "")


def test_a_name_ends_at_its_first_nul_as_triton_reads_it() -> None:
    data = service_pb2.ModelReadyRequest(name="simple\x00junk", version="1").SerializeToString()
    assert read_model_key(data) == ("simple", "1")
    leading = service_pb2.ModelReadyRequest(name="\x00m").SerializeToString()
    assert read_model_key(leading) == ("", "")


def test_reads_the_same_fields_of_other_model_scoped_requests() -> None:
    for message in (
        service_pb2.ModelReadyRequest(name="m", version="3"),
        service_pb2.ModelMetadataRequest(name="m", version="3"),
        service_pb2.ModelConfigRequest(name="m", version="3"),
    ):
        assert read_model_key(message.SerializeToString()) == ("m", "3")


def test_field_order_does_not_matter() -> None:
    tail = _infer_request(id="x").SerializeToString()
    head = service_pb2.ModelInferRequest(model_name="late", model_version="9").SerializeToString()
    assert read_model_key(tail + head) == ("late", "9")


def test_empty_message_has_no_model() -> None:
    assert read_model_key(b"") == ("", "")


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x10short",  # length runs past the end
        b"\x0a",  # length missing
        b"\x0b\x00",  # wire type 3 (deprecated groups)
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # varint too long
        b"\x00\x00",  # field number 0
    ],
)
def test_malformed_bytes_are_answered_as_triton_answers_them(data: bytes) -> None:
    with pytest.raises(UnparsableRequestError) as info:
        read_model_key(data)
    # Triton's own answer to bytes it cannot parse.
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert info.value.message == "Unable to parse request"


def test_a_non_utf8_name_cannot_be_parsed() -> None:
    with pytest.raises(UnparsableRequestError):
        read_model_key(b"\x0a\x02\xff\xfe")
