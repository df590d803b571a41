"""Tensor decoding for the fallback: memory proportional to the request, bounded up front."""

import tracemalloc

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.backends.tensor_codec import Naming, decode_input, decoded_bytes_bound

ELEMENTS = 1_000_000
NAMING = Naming("m", "")


def _typed(field: str, datatype: str, values: object, shape: list[int]) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="INPUT", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request.SerializeToString()


def test_typed_fp32_contents_decode_without_a_python_list() -> None:
    values = np.random.default_rng(0).standard_normal(ELEMENTS).astype(np.float32)
    request = service_pb2.ModelInferRequest.FromString(
        _typed("fp32_contents", "FP32", values, [1, ELEMENTS])
    )
    tracemalloc.start()
    try:
        array = decode_input(request.inputs[0], None, NAMING)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(array.reshape(-1), values)
    # The array itself (4 MB) and little else; a list of Python floats would be 32 MB more.
    assert peak < 2 * values.nbytes, peak


@pytest.mark.parametrize(
    ("field", "datatype", "dtype"),
    [
        ("int_contents", "INT8", np.int8),
        ("int_contents", "INT32", np.int32),
        ("int64_contents", "INT64", np.int64),
        ("uint_contents", "UINT16", np.uint16),
        ("uint64_contents", "UINT64", np.uint64),
        ("fp64_contents", "FP64", np.float64),
        ("bool_contents", "BOOL", np.bool_),
    ],
)
def test_typed_contents_of_each_type_decode_exactly(field: str, datatype: str, dtype: type) -> None:
    values = np.arange(12) % 2 if datatype == "BOOL" else np.arange(12)
    expected = values.astype(dtype).reshape(3, 4)
    request = service_pb2.ModelInferRequest.FromString(
        _typed(field, datatype, expected.reshape(-1).tolist(), [3, 4])
    )
    array = decode_input(request.inputs[0], None, NAMING)
    assert array.dtype == np.dtype(dtype)
    assert np.array_equal(array, expected)


def test_the_bound_counts_raw_contents_at_their_length() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    for name in ("A", "B"):
        request.inputs.add(name=name, datatype="FP32", shape=[1000])
        request.raw_input_contents.append(bytes(4000))
    assert 8000 <= decoded_bytes_bound(request.SerializeToString()) <= 8000 + 2048


def test_the_bound_counts_typed_varints_at_their_decoded_width() -> None:
    # A million zeros take a million wire bytes but 8 MB once parsed as int64.
    data = _typed("int64_contents", "INT64", [0] * ELEMENTS, [ELEMENTS])
    assert len(data) < 1.1 * ELEMENTS
    assert decoded_bytes_bound(data) >= 8 * ELEMENTS


def test_the_bound_counts_fp32_contents_once() -> None:
    data = _typed("fp32_contents", "FP32", [1.5] * ELEMENTS, [ELEMENTS])
    assert 4 * ELEMENTS <= decoded_bytes_bound(data) <= 4 * ELEMENTS + 1024


def test_the_bound_counts_many_empty_elements_at_their_cost() -> None:
    # 500,000 empty raw_input_contents: one megabyte on the wire, half a million Python
    # objects once parsed; refused by a budget rather than walked one by one.
    data = b"\x3a\x00" * 500_000
    assert decoded_bytes_bound(data) >= 500_000 * 64


def test_the_bound_counts_each_bytes_element_with_its_object() -> None:
    data = _typed("bytes_contents", "BYTES", [b""] * 10_000, [10_000])
    assert decoded_bytes_bound(data) >= 10_000 * 48


def test_unpacked_elements_past_the_walk_limit_count_at_the_worst_expansion() -> None:
    # 100,000 unpacked int64 zeros (field 3, varint): tag + value, two wire bytes each.
    contents = b"\x18\x00" * 100_000
    tensor = b"\x0a\x01A\x12\x05INT64" + b"\x2a" + _varint(len(contents)) + contents
    data = b"\x2a" + _varint(len(tensor)) + tensor
    assert decoded_bytes_bound(data) >= 8 * 100_000


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
