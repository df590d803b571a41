"""The ONNX Runtime fallback on the repository's real model files answers like Triton."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

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
        (lambda r: r.raw_input_contents.pop(), "unable to find data for input tensor 'INPUT1'"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 8), "byte size mismatch"),
        (lambda r: r.outputs.add(name="OUTPUT9"), "unexpected inference output 'OUTPUT9'"),
        (lambda r: setattr(r.inputs[0], "datatype", "BOGUS"), "data-type is '<invalid>'"),
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
    with pytest.raises(GatewayError) as info:
        _answer(fallback, _simple(big, big))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # Triton's words: the batch is checked before the shapes.
    assert info.value.message.endswith("inference request batch-size must be <= 8 for 'simple'")


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


def test_a_name_too_long_for_a_file_is_not_found_in_tritons_words(fallback: OnnxFallback) -> None:
    # 300 characters: as a path component it would be ENAMETOOLONG; the fallback never builds
    # a path from a client's name, it looks the name up in the listing read at start.
    name = "m" * 300
    assert not fallback.serves(name)
    request = service_pb2.ModelInferRequest(model_name=name, model_version="1")
    with pytest.raises(GatewayError) as info:
        _answer(fallback, request)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == f"Request for unknown model: '{name}' is not found"


@pytest.mark.parametrize(
    ("version", "code", "message"),
    [
        ("9", grpc.StatusCode.NOT_FOUND,
         "Request for unknown model: 'classifier' version 9 is not found"),
        ("-0", grpc.StatusCode.NOT_FOUND,
         "Request for unknown model: 'classifier' version 0 is not found"),
        ("x" * 300, grpc.StatusCode.INVALID_ARGUMENT,
         f"failed to get model version from specified version string '{'x' * 300}' "
         "(details: stol), version should be an integral value > 0"),
        ("-1", grpc.StatusCode.INVALID_ARGUMENT,
         "invalid model version specified '-1' , version should be an integral value > 0"),
    ],
)  # fmt: skip
def test_versions_are_read_as_triton_reads_them(
    fallback: OnnxFallback, version: str, code: grpc.StatusCode, message: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version=version)
    with pytest.raises(GatewayError) as info:
        _answer(fallback, request)
    assert (info.value.code, info.value.message) == (code, message)


def test_a_version_spelled_otherwise_runs_that_version(fallback: OnnxFallback) -> None:
    x = classifier_features(batch=1, seed=2)
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version="01")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(x.tobytes())
    assert _answer(fallback, request).model_version == "1"


def _typed_identity(elements: int) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[elements])
    tensor.contents.fp32_contents.extend(np.arange(elements, dtype=np.float32))
    return request.SerializeToString()


def test_typed_contents_over_the_per_call_budget_are_refused_at_once() -> None:
    runtime = OnnxFallback(MODEL_REPOSITORY, max_request_bytes=1024 * 1024)
    try:
        answer = service_pb2.ModelInferResponse.FromString(
            asyncio.run(runtime.infer(_typed_identity(1000)))
        )
        assert list(answer.outputs[0].shape) == [1000]
        with pytest.raises(GatewayError) as info:
            asyncio.run(runtime.infer(_typed_identity(300_000)))  # 1.2 MB of fp32
    finally:
        runtime.close()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fallback.max_request_bytes" in info.value.message


def test_calls_together_stay_within_the_total_budget() -> None:
    one = _typed_identity(100_000)  # 400 kB decoded
    runtime = OnnxFallback(
        MODEL_REPOSITORY, max_concurrency=1, max_queue=8, max_total_bytes=1_000_000
    )

    async def three_at_once() -> list[bytes | BaseException]:
        return await asyncio.gather(*(runtime.infer(one) for _ in range(3)), return_exceptions=True)

    try:
        first, second, third = asyncio.run(three_at_once())
        # The budget is given back when a call ends: a later call fits again.
        assert isinstance(asyncio.run(runtime.infer(one)), bytes)
    finally:
        runtime.close()
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert isinstance(third, GatewayError)
    assert third.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fallback.max_total_bytes" in third.message


def test_sequence_and_decoupled_models_are_never_served() -> None:
    # The repository has both; naming them in fallback.models does not make them servable.
    for models in (None, ["accumulator", "repeat", "strings"]):
        runtime = OnnxFallback(MODEL_REPOSITORY, models=models)
        try:
            assert not runtime.serves("accumulator")
            assert not runtime.serves("repeat")
            assert runtime.serves("strings")
            assert "accumulator" not in runtime.models()
            assert "repeat" not in runtime.models()
        finally:
            runtime.close()
    runtime = OnnxFallback(MODEL_REPOSITORY)
    try:
        assert runtime.models() == ["classifier", "identity", "int8_add", "simple", "strings"]
        request = service_pb2.ModelInferRequest(model_name="accumulator")
        request.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
        request.raw_input_contents.append(np.zeros((1, 1), np.int32).tobytes())
        with pytest.raises(GatewayError) as info:
            _answer(runtime, request)
    finally:
        runtime.close()
    assert info.value.code == grpc.StatusCode.NOT_FOUND


SIMPLE_CONFIG = (MODEL_REPOSITORY / "simple" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    ("extra", "served"),
    [
        ("", True),
        ("sequence_batching { }\n", False),
        ("model_transaction_policy { decoupled: true }\n", False),
        ('backend: "python"\n', False),
        ("this is not a config\n", False),
    ],
    ids=["stateless-onnx", "sequence", "decoupled", "python-backend", "unreadable"],
)
def test_only_stateless_unary_onnx_models_are_listed(
    tmp_path: Path, extra: str, served: bool
) -> None:
    model_dir = tmp_path / "simple"
    (model_dir / "1").mkdir(parents=True)
    onnx_file = MODEL_REPOSITORY / "simple" / "1" / "model.onnx"
    shutil.copyfile(onnx_file, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(SIMPLE_CONFIG + extra)
    runtime = OnnxFallback(tmp_path)
    try:
        assert runtime.serves("simple") is served
        assert runtime.models() == (["simple"] if served else [])
    finally:
        runtime.close()


def _length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_strings_are_bytes_in_and_out(fallback: OnnxFallback, typed: bool) -> None:
    texts = [b"hello, World", b"", "gr\u00fc\u00dfe".encode()]
    request = service_pb2.ModelInferRequest(model_name="strings")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    if typed:
        tensor.contents.bytes_contents.extend(texts)
    else:
        request.raw_input_contents.append(_length_prefixed(texts))
    response = _answer(fallback, request)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("UPPER", "BYTES", [3]),
        ("ECHO", "BYTES", [3]),
    ]
    # Not the repr of a bytes object ("b'hello'"): the text itself, ASCII letters upper-cased.
    assert response.raw_output_contents[0] == _length_prefixed([t.upper() for t in texts])
    assert response.raw_output_contents[1] == _length_prefixed(texts)


def test_strings_that_are_not_utf8_are_invalid_argument(fallback: OnnxFallback) -> None:
    request = service_pb2.ModelInferRequest(model_name="strings")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(_length_prefixed([b"\xff"]))
    with pytest.raises(GatewayError) as info:
        _answer(fallback, request)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'TEXT': an element is not UTF-8 text" in info.value.message


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_int8_add_wraps_as_numpy_does(fallback: OnnxFallback, typed: bool) -> None:
    a = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)[:2]
    b = np.roll(a, 5)
    request = service_pb2.ModelInferRequest(model_name="int8_add")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = request.inputs.add(name=name, datatype="INT8", shape=list(values.shape))
        if typed:
            tensor.contents.int_contents.extend(values.reshape(-1).tolist())
        else:
            request.raw_input_contents.append(values.tobytes())
    response = _answer(fallback, request)
    assert [(o.name, o.datatype) for o in response.outputs] == [
        ("OUTPUT0", "INT8"),
        ("OUTPUT1", "INT8"),
    ]
    assert np.array_equal(_output(response, "OUTPUT0", np.int8), a + b)
    assert np.array_equal(_output(response, "OUTPUT1", np.int8), a - b)
