"""The ONNX Runtime fallback on the repository's real model files answers like Triton."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.backends.fallback import OnnxFallback
from gateway.errors import GatewayError
from tests.support.models import MODEL_REPOSITORY, classifier_features, reference_classifier


@pytest.fixture(scope="module")
def fallback() -> Iterator[OnnxFallback]:
    runtime = OnnxFallback(MODEL_REPOSITORY, max_concurrency=2)
    yield runtime
    runtime.close()


def _simple(
    a: np.ndarray, b: np.ndarray, *, typed: bool = False, **fields: object
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple", **fields)
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=list(values.shape))
        if typed:
            tensor.contents.int_contents.extend(values.reshape(-1).tolist())
        else:
            request.raw_input_contents.append(values.tobytes())
    return request


def _answer(fallback: OnnxFallback, request: service_pb2.ModelInferRequest):  # type: ignore[no-untyped-def]
    data = asyncio.run(fallback.infer(request.SerializeToString()))
    return service_pb2.ModelInferResponse.FromString(data)


def _output(response: service_pb2.ModelInferResponse, name: str, dtype: type) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    shape = list(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(shape)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_simple_is_exact_from_raw_and_typed_contents(fallback: OnnxFallback, typed: bool) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    response = _answer(fallback, _simple(a, b, typed=typed, id="r-7"))
    assert (response.model_name, response.model_version, response.id) == ("simple", "1", "r-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "INT32", [2, 16]),
        ("OUTPUT1", "INT32", [2, 16]),
    ]
    assert np.array_equal(_output(response, "OUTPUT0", np.int32), a + b)
    assert np.array_equal(_output(response, "OUTPUT1", np.int32), a - b)


@pytest.mark.parametrize("version", ["1", "2", ""])
def test_classifier_versions_and_latest(fallback: OnnxFallback, version: str) -> None:
    x = classifier_features(batch=3, seed=4)
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version=version)
    request.inputs.add(name="INPUT", datatype="FP32", shape=[3, 8])
    request.raw_input_contents.append(x.tobytes())
    response = _answer(fallback, request)
    ran = version or "2"
    assert response.model_version == ran
    np.testing.assert_allclose(
        _output(response, "PROBABILITIES", np.float32), reference_classifier(int(ran), x), atol=1e-6
    )


def test_only_the_requested_outputs_come_back(fallback: OnnxFallback) -> None:
    a = b = np.ones((1, 16), np.int32)
    request = _simple(a, b)
    request.outputs.add(name="OUTPUT1")
    response = _answer(fallback, request)
    assert [o.name for o in response.outputs] == ["OUTPUT1"]


ONE = np.ones((1, 16), np.int32)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.inputs[0].shape.__setitem__(1, 8), "unexpected shape for input 'INPUT0'"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), "data-type is 'FP32'"),
        (lambda r: setattr(r.inputs[1], "name", "INPUT9"), "unexpected inference input 'INPUT9'"),
        (lambda r: (r.inputs.pop(), r.raw_input_contents.pop()), "expected 2 inputs but got 1"),
        (lambda r: r.raw_input_contents.pop(), "expected 2 raw_input_contents, got 1"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 8), "byte size mismatch"),
        (lambda r: r.outputs.add(name="OUTPUT9"), "unexpected inference output 'OUTPUT9'"),
        (lambda r: setattr(r.inputs[0], "datatype", "BOGUS"), "data-type is 'BOGUS'"),
    ],
    ids=["shape", "dtype", "unknown-input", "missing-input", "raw-count", "byte-size",
         "unknown-output", "unknown-datatype"],
)  # fmt: skip
def test_bad_requests_are_invalid_argument(
    fallback: OnnxFallback, mutate: object, message: str
) -> None:
    request = _simple(ONE, ONE)
    mutate(request)  # type: ignore[operator]
    with pytest.raises(GatewayError) as info:
        _answer(fallback, request)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_batch_over_max_batch_size_is_invalid(fallback: OnnxFallback) -> None:
    big = np.ones((9, 16), np.int32)
    with pytest.raises(GatewayError, match="unexpected shape") as info:
        _answer(fallback, _simple(big, big))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_or_version_is_not_found(fallback: OnnxFallback) -> None:
    for name, version in (("nope", ""), ("classifier", "3")):
        request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
        with pytest.raises(GatewayError) as info:
            _answer(fallback, request)
        assert info.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("max_queue", [0, 2])
def test_beyond_running_and_waiting_calls_is_resource_exhausted_at_once(max_queue: int) -> None:
    runtime = OnnxFallback(MODEL_REPOSITORY, max_concurrency=1, max_queue=max_queue)
    payload = _simple(ONE, ONE).SerializeToString()
    calls = 1 + max_queue + 1  # one running, the queue full, one more

    async def at_once() -> list[bytes | BaseException]:
        return await asyncio.gather(
            *(runtime.infer(payload) for _ in range(calls)), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(at_once())
    finally:
        runtime.close()
    assert all(isinstance(answer, bytes) for answer in outcomes[:-1])
    refused = outcomes[-1]
    assert isinstance(refused, GatewayError)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_model_outside_the_allowed_list_is_not_served() -> None:
    runtime = OnnxFallback(MODEL_REPOSITORY, models=["classifier"])
    try:
        assert runtime.serves("classifier")
        assert not runtime.serves("simple")
        assert not runtime.serves("nope")
    finally:
        runtime.close()
