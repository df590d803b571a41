"""Decodes request tensors and encodes response tensors, for the local fallback only.

The Triton path never decodes tensors; this module exists so the fallback can answer exactly
like Triton: the same tensors in ``raw_input_contents`` or typed ``contents``, the same
INVALID_ARGUMENT cases, outputs back as ``raw_output_contents``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.errors import InvalidRequestError

# Triton datatype name -> numpy dtype (BYTES is object: length-prefixed byte strings).
DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
# Which typed ``InferTensorContents`` field carries each datatype.
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
MAX_ELEMENTS = 1 << 31


def config_datatype(data_type: int) -> str:
    """TYPE_FP32 -> FP32, TYPE_STRING -> BYTES, as Triton names them on the wire."""
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequestError(f"negative dimension in shape {list(shape)}")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidRequestError(f"shape {list(shape)} has too many elements")
    return count


def decode_input(
    tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> npt.NDArray[np.generic]:
    """One input as an array of its declared datatype and shape."""
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidRequestError(f"invalid datatype '{tensor.datatype}' for input '{tensor.name}'")
    shape = list(tensor.shape)
    count = element_count(shape)
    if raw is not None:
        if tensor.datatype == "BYTES":
            return _decode_bytes(raw, count, tensor.name).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidRequestError(
                f"input byte size mismatch for input '{tensor.name}': expected {expected}, "
                f"got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = TYPED_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidRequestError(
            f"datatype {tensor.datatype} of input '{tensor.name}' must be sent in "
            "raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidRequestError(
            f"unexpected number of values for input '{tensor.name}': expected {count}, "
            f"got {len(values)}"
        )
    if tensor.datatype == "BYTES":
        return np.array(list(values), dtype=np.object_).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def encode_output(array: npt.NDArray[np.generic], datatype: str) -> bytes:
    """Raw bytes as Triton puts them in ``raw_output_contents``."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def _decode_bytes(raw: bytes, count: int, name: str) -> npt.NDArray[np.object_]:
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidRequestError(f"malformed BYTES contents for input '{name}'")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidRequestError(f"malformed BYTES contents for input '{name}'")
        items.append(raw[pos : pos + length])
        pos += length
    if len(items) != count:
        raise InvalidRequestError(
            f"unexpected number of string elements for input '{name}': expected {count}, "
            f"got {len(items)}"
        )
    return np.array(items, dtype=np.object_)
