"""When no Triton can serve, the gateway answers from its local ONNX Runtime fallback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.metrics import requests_total, wait_until
from tests.support.models import classifier_features, classifier_input, simple_arrays

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVED_BY = ("x-gateway-served-by", "fallback")


def _settings(backend_address: str, poll_interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    return load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"host": "127.0.0.1", "port": 0},
        repository={"path": str(MODEL_REPOSITORY)},
        backends=[{"name": "only", "address": backend_address}],
        health={"poll_interval_s": poll_interval_s, "poll_timeout_s": 0.5, "startup_wait_s": 1},
    )


@pytest.fixture(scope="module")
def no_fleet() -> Iterator[BackgroundGateway]:
    """A gateway whose only backend never answers."""
    dead = f"127.0.0.1:{free_port()}"
    with BackgroundGateway(Gateway(_settings(dead))) as gateway:
        yield gateway


def _infer_with_trailers(url: str, request: service_pb2.ModelInferRequest):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(url)
    call = channel.unary_unary(
        INFER,
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    response, outcome = call.with_call(request, timeout=10)
    return response, tuple(outcome.trailing_metadata() or ())


def test_answers_come_from_the_fallback_and_say_so(no_fleet: BackgroundGateway) -> None:
    client = grpcclient.InferenceServerClient(no_fleet.url)
    assert client.is_server_ready()  # the fallback can answer
    a, b = simple_arrays(batch=2)
    request = service_pb2.ModelInferRequest(model_name="simple", id="fb-1")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[2, 16])
        request.raw_input_contents.append(values.tobytes())
    response, trailers = _infer_with_trailers(no_fleet.url, request)
    assert SERVED_BY in trailers
    assert (response.model_version, response.id) == ("1", "fb-1")
    out = np.frombuffer(response.raw_output_contents[0], np.int32).reshape(2, 16)
    assert np.array_equal(out, a + b)
    port = no_fleet.gateway.metrics_port
    assert requests_total(port, path="fallback", model="simple", code="OK") >= 1


def test_fallback_matches_triton(no_fleet: BackgroundGateway, fleet: LocalFleet) -> None:
    x = classifier_features(batch=4, seed=11)
    direct = grpcclient.InferenceServerClient(fleet.servers["triton-a"].address)
    via_fallback = grpcclient.InferenceServerClient(no_fleet.url)
    for version in ("1", "2"):
        expected = direct.infer("classifier", classifier_input(x), model_version=version)
        got = via_fallback.infer("classifier", classifier_input(x), model_version=version)
        assert got.get_response().model_version == version
        np.testing.assert_allclose(
            got.as_numpy("PROBABILITIES"), expected.as_numpy("PROBABILITIES"), atol=1e-5
        )


def test_client_errors_are_still_invalid_argument(no_fleet: BackgroundGateway) -> None:
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 8])
    request.raw_input_contents.append(a[:, :8].tobytes())
    with pytest.raises(grpc.RpcError) as info:
        _infer_with_trailers(no_fleet.url, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The refusal is the fallback's, and says so as its answers do.
    assert SERVED_BY in tuple(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    del b


def test_a_backend_killed_between_polls_is_covered_by_the_fallback(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The forward fails (tgw-edge hands the call to the gateway) and the fallback answers."""
    spec = ServerSpec("victim", models=("simple",))
    fleet_dir = tmp_path_factory.mktemp("victim-fleet")
    with LocalFleet(triton_installation, MODEL_REPOSITORY, fleet_dir, [spec]) as fleet:
        server = fleet.servers["victim"]
        # Polls far apart: the kill is met by requests, not first noticed by a poll.
        settings = _settings(server.address, poll_interval_s=60)
        with BackgroundGateway(Gateway(settings)) as gateway:
            a, b = simple_arrays()
            request = service_pb2.ModelInferRequest(model_name="simple")
            for name, values in (("INPUT0", a), ("INPUT1", b)):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
                request.raw_input_contents.append(values.tobytes())
            response, trailers = _infer_with_trailers(gateway.url, request)
            assert SERVED_BY not in trailers  # Triton answered while alive
            os.kill(server.pid, signal.SIGKILL)
            assert server.process is not None
            server.process.wait()
            response, trailers = _infer_with_trailers(gateway.url, request)
            assert SERVED_BY in trailers
            out = np.frombuffer(response.raw_output_contents[1], np.int32).reshape(1, 16)
            assert np.array_equal(out, a - b)
            # tgw-edge routed both: the first to Triton, the second too (the route still
            # named the backend), whose failure it handed to the gateway's fallback.
            port = gateway.gateway.metrics_port
            routed = {"path": "edge", "model": "simple", "backend": "only"}

            def counted() -> tuple[float, float, float]:
                return (
                    requests_total(port, **routed, code="OK"),
                    requests_total(port, **routed, code="UNAVAILABLE"),
                    requests_total(port, path="fallback", model="simple", code="OK"),
                )

            assert wait_until(lambda: counted() == (1, 1, 1)), counted()


def test_a_shared_memory_refusal_is_not_the_fallbacks_with_no_backend_up(
    no_fleet: BackgroundGateway,
) -> None:
    """With no backend to say whether Triton would refuse a call earlier, the gateway's own
    check of the client's regions answers, not the fallback's reading of a tensorless copy."""
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.parameters["shared_memory_region"].string_param = "nosuch_region"
        tensor.parameters["shared_memory_byte_size"].int64_param = 64
    with pytest.raises(grpc.RpcError) as info:
        _infer_with_trailers(no_fleet.url, request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Unable to find shared memory region: 'nosuch_region'"


def _classified(
    model: str, tensors: dict[str, np.ndarray], output: str, classes: object
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="cls")
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int8): "INT8"}
    for name, values in tensors.items():
        request.inputs.add(name=name, datatype=datatypes[values.dtype], shape=list(values.shape))
        request.raw_input_contents.append(values.tobytes())
    parameter = request.outputs.add(name=output).parameters["classification"]
    if isinstance(classes, int):
        parameter.int64_param = classes
    else:
        parameter.string_param = str(classes)
    return request


def _outcome_of(url: str, request: service_pb2.ModelInferRequest) -> tuple[str, str, bytes]:
    try:
        response, _ = _infer_with_trailers(url, request)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", b""  # type: ignore[attr-defined]
    return "OK", "", response.SerializeToString()


def test_classification_is_answered_as_triton_answers_it(
    no_fleet: BackgroundGateway, fleet: LocalFleet
) -> None:
    """An output asked for with `classification: k` is the top k classes of each batch row,
    as "value:index" strings (BYTES), the same bytes as Triton's; its refusals are Triton's."""
    x = classifier_features(batch=2, seed=12)
    ints = np.arange(-8, 8, dtype=np.int8).reshape(1, 16)
    cases = [
        _classified("classifier", {"INPUT": x}, "PROBABILITIES", 2),
        _classified("classifier", {"INPUT": x}, "PROBABILITIES", 10),  # past the classes
        _classified("identity", {"INPUT": np.array([3, 1, 2], np.float32)}, "OUTPUT", 2),
        _classified("int8_add", {"INPUT0": ints, "INPUT1": ints}, "OUTPUT1", 3),
        _classified("classifier", {"INPUT": x}, "PROBABILITIES", 0),
        _classified("classifier", {"INPUT": x}, "PROBABILITIES", "2"),
    ]
    direct = fleet.servers["triton-a"].address
    for request in cases:
        expected = _outcome_of(direct, request)
        assert _outcome_of(no_fleet.url, request) == expected, request.outputs
    first = service_pb2.ModelInferResponse.FromString(_outcome_of(direct, cases[0])[2])
    assert (first.outputs[0].datatype, list(first.outputs[0].shape)) == ("BYTES", [2, 2])


def _simple_request(
    shapes: list[tuple[str, list[int]]], short_input: str = ""
) -> service_pb2.ModelInferRequest:
    """`simple` with these inputs (a name may come twice); `short_input`'s raw contents lack
    their last four bytes."""
    request = service_pb2.ModelInferRequest(model_name="simple", id="bad")
    for name, shape in shapes:
        raw = np.zeros(shape, np.int32).tobytes()
        request.inputs.add(name=name, datatype="INT32", shape=shape)
        request.raw_input_contents.append(raw[:-4] if name == short_input else raw)
    return request


# One input at fault in each: Triton checks a request's inputs in its own map's order.
BAD_REQUESTS = {
    "duplicate input": _simple_request(
        [("INPUT0", [1, 16]), ("INPUT1", [1, 16]), ("INPUT0", [1, 16])]
    ),
    "misspelled input": _simple_request([("INPUT0", [1, 16]), ("input1", [1, 16])]),
    "batch past the maximum": _simple_request([("INPUT0", [9, 16]), ("INPUT1", [9, 16])]),
    "wrong shape": _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 15])]),
    "too few bytes": _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 16])], "INPUT1"),
}
_no_data = _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 16])])
del _no_data.raw_input_contents[1]
_typed_too = _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 16])])
_typed_too.inputs[1].contents.int_contents.extend([0] * 16)
_priority_text = _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 16])])
_priority_text.parameters["priority"].string_param = "1"
BAD_REQUESTS |= {
    "an input without data": _no_data,
    "typed contents beside raw ones": _typed_too,
    "a priority that is no number": _priority_text,
}


def _strings_request(count: int, raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="strings", id="t")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(raw)
    return request


def _prefixed(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def _typed(values: list[int], field: str = "int_contents") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple", id="s")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        getattr(tensor.contents, field).extend(values if name == "INPUT1" else list(range(16)))
    return request


_bogus_type = _simple_request([("INPUT0", [1, 16]), ("INPUT1", [1, 16])])
_bogus_type.inputs[1].datatype = "FOO"
_unknown_length = service_pb2.ModelInferRequest(model_name="identity", id="i")
_unknown_length.inputs.add(name="INPUT", datatype="FP32", shape=[-1])
_unknown_length.raw_input_contents.append(b"")
BAD_REQUESTS |= {
    "a string's length cut short": _strings_request(1, _prefixed(b"abc")[:3]),
    "a string longer than its bytes": _strings_request(1, (5).to_bytes(4, "little") + b"abc"),
    "bytes after the last string": _strings_request(1, _prefixed(b"a") + b"xy"),
    "fewer strings than the shape": _strings_request(2, _prefixed(b"a")),
    "more strings than the shape": _strings_request(1, _prefixed(b"a", b"b")),
    "typed values too many": _typed(list(range(17))),
    "typed values too few": _typed(list(range(15))),
    "typed values of another type": _typed(list(range(16)), "int64_contents"),
    "an unknown datatype": _bogus_type,
    "a dimension left unknown": _unknown_length,
}


def _faults(*inputs: tuple[str, str, list[int], int]) -> service_pb2.ModelInferRequest:
    """`simple` with these (name, datatype, shape, raw byte count) inputs."""
    request = service_pb2.ModelInferRequest(model_name="simple", id="two")
    for name, datatype, shape, size in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(bytes(size))
    return request


# Faults in more than one input, and lists of inputs: which input Triton names, and in which
# order it lists them, is its core's map order (gateway/backends/triton_order.py), not the
# request's.
BAD_REQUESTS |= {
    "an input missing": _simple_request([("INPUT1", [1, 16])]),
    "no input at all": _faults(),
    "an input too many": _simple_request(
        [("INPUT0", [1, 16]), ("INPUT1", [1, 16]), ("INPUT2", [1, 16])]
    ),
    "four inputs for two": _faults(
        ("A", "INT32", [1, 16], 64),
        ("INPUT1", "INT32", [1, 16], 64),
        ("INPUT2", "INT32", [1, 16], 64),
        ("INPUT0", "INT32", [1, 16], 64),
    ),
    "two unknown names": _faults(("a", "INT32", [1, 16], 64), ("b", "INT32", [1, 16], 64)),
    "a batch of none": _simple_request([("INPUT0", [0, 16]), ("INPUT1", [0, 16])]),
    "batch sizes that differ": _simple_request([("INPUT0", [1, 16]), ("INPUT1", [2, 16])]),
    "batch sizes 9 and 1": _faults(
        ("INPUT0", "INT32", [9, 16], 576), ("INPUT1", "INT32", [1, 16], 64)
    ),
    "a datatype and a shape wrong": _faults(
        ("INPUT0", "FP32", [1, 16], 64), ("INPUT1", "INT32", [1, 15], 60)
    ),
    "a shape and a byte size wrong": _faults(
        ("INPUT0", "INT32", [1, 15], 60), ("INPUT1", "INT32", [1, 16], 56)
    ),
    "both byte sizes wrong, in reverse": _faults(
        ("INPUT1", "INT32", [1, 16], 56), ("INPUT0", "INT32", [1, 16], 60)
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_the_fallbacks_refusals_are_tritons(
    no_fleet: BackgroundGateway, fleet: LocalFleet, case: str
) -> None:
    request = BAD_REQUESTS[case]
    expected = _outcome_of(fleet.servers["triton-a"].address, request)
    assert expected[0] == "INVALID_ARGUMENT"
    assert _outcome_of(no_fleet.url, request) == expected
