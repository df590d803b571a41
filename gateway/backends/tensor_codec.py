"""Decodes request tensors and encodes response tensors, for the local fallback only.

The Triton path never decodes tensors; this module exists so the fallback can answer exactly
like Triton: the same tensors in ``raw_input_contents`` or typed ``contents``, the same
INVALID_ARGUMENT cases, outputs back as ``raw_output_contents``.

Memory stays proportional to the request: ``decoded_bytes_bound`` reads, from the wire bytes and
before anything is parsed, an upper bound of what parsing and decoding will hold, so a budget can
refuse a request first; typed contents are decoded with ``numpy.fromiter`` from their count, never
through a Python list (a list of floats costs 32 bytes per 4-byte element).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.errors import InvalidRequestError
from gateway.routing.wire import iter_fields, read_varint

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
# numpy dtype each typed field holds its values in (the protobuf type of the field).
_FIELD_DTYPES: dict[str, np.dtype[np.generic]] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

# Wire layout of ModelInferRequest and its parts (grpc_service.proto), for the bound below.
_REQUEST_INPUTS = 5
_REQUEST_RAW_CONTENTS = 7
_INPUT_DATATYPE = 2
_INPUT_SHAPE = 3
_INPUT_CONTENTS = 5
_BYTES_FIELD = 8
_WIRE_VARINT = 0
_WIRE_LENGTH_DELIMITED = 2
# Decoded bytes per wire byte of a packed typed field, by field number: a varint takes at least
# one byte on the wire and 4 or 8 once decoded; fixed-width floats take the same.
_PACKED_EXPANSION = {1: 1, 2: 4, 3: 8, 4: 4, 5: 8, 6: 1, 7: 1}
# Decoded bytes of one unpacked element, by field number.
_ELEMENT_BYTES = {1: 1, 2: 4, 3: 8, 4: 4, 5: 8, 6: 4, 7: 8}
# What one element of a repeated field costs beside its bytes once parsed and handed to Python
# (a bytes object, its slot in a list or object array, the parser's string view; for a
# message, the parser's copy and its Python wrapper), so that many empty elements count too.
_ELEMENT_OVERHEAD = 64
_MESSAGE_OVERHEAD = 256
# Past this many fields in one message (legitimate requests have a handful per tensor, and
# numbers packed into one field; only BYTES elements come one per field), the rest is counted
# at the worst expansion (an empty message: two wire bytes) rather than walked field by field:
# the bound must stay cheap for any input.
_MAX_WALKED_FIELDS = 16_384
_WORST_EXPANSION = _MESSAGE_OVERHEAD // 2


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


@dataclass(frozen=True, slots=True)
class Naming:
    """How Triton names an input in its refusals: the model, and the request-id prefix some
    of its messages start with."""

    model: str
    prefix: str


_FIELD_TYPES = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}


def decode_input(
    tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None, naming: Naming
) -> npt.NDArray[np.generic]:
    """One input as an array of its declared datatype and shape; refused in Triton's words."""
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidRequestError(f"invalid datatype '{tensor.datatype}' for input '{tensor.name}'")
    shape = list(tensor.shape)
    count = element_count(shape)
    if raw is not None:
        if tensor.datatype == "BYTES":
            return _decode_bytes(raw, count, tensor.name, naming).reshape(shape)
        sized = _sized(raw, count * dtype.itemsize, tensor.name, naming)
        return np.frombuffer(sized, dtype=dtype).reshape(shape)
    field = TYPED_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidRequestError(
            f"datatype {tensor.datatype} of input '{tensor.name}' must be sent in "
            "raw_input_contents"
        )
    check_contents_type(tensor, naming.model)
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        if len(values) != count:
            raise InvalidRequestError(_fewer_strings(count, len(values), tensor.name, naming))
        return np.fromiter(values, dtype=np.object_, count=count).reshape(shape)
    # Triton turns typed contents into bytes first: a wrong count is a byte size mismatch.
    if len(values) != count:
        _sized(b"", count * dtype.itemsize, tensor.name, naming, got=len(values) * dtype.itemsize)
    # One element at a time into a preallocated array: np.array() would first build a list.
    array = np.fromiter(values, dtype=_FIELD_DTYPES[field], count=count)
    return (array if array.dtype == dtype else array.astype(dtype)).reshape(shape)


def check_contents_type(tensor: service_pb2.ModelInferRequest.InferInputTensor, model: str) -> None:
    """Typed contents in a field of another datatype than the input's: refused as Triton's
    frontend refuses them, while it reads the request's inputs in their order."""
    field = TYPED_FIELDS.get(tensor.datatype)
    for other, type_name in _FIELD_TYPES.items():
        if other != field and len(getattr(tensor.contents, other)):
            raise InvalidRequestError(
                f"unexpected explicit tensor data for input tensor '{tensor.name}' for model "
                f"'{model}' of type '{type_name}', expected datatype '{tensor.datatype}'"
            )


def _sized(raw: bytes, expected: int, name: str, naming: Naming, got: int | None = None) -> bytes:
    size = len(raw) if got is None else got
    if size != expected:
        raise InvalidRequestError(
            f"{naming.prefix}input byte size mismatch for input '{name}' for model "
            f"'{naming.model}'. Expected {expected}, got {size}"
        )
    return raw


def _fewer_strings(expected: int, got: int, name: str, naming: Naming) -> str:
    return (
        f"{naming.prefix}expected {expected} string elements for inference input '{name}' "
        f"for model '{naming.model}', got {got}"
    )


def decoded_bytes_bound(data: bytes) -> int:
    """Upper bound of the tensor bytes that parsing and decoding ``data`` will hold.

    Reads the serialized ModelInferRequest without parsing it: raw contents count their
    length (BYTES ones also one Python object per element), typed contents count each packed
    field at its decoded width, and every element of a repeated field its own cost.
    Malformed bytes: InvalidRequestError.
    """
    view = memoryview(data)
    total = 0
    inputs: list[tuple[str, int]] = []
    raw_lengths: list[int] = []
    for field, wire, start, stop in _walk(view, 0, len(view)):
        if field < 0:
            return total + (stop - start) * _WORST_EXPANSION
        total += _MESSAGE_OVERHEAD
        if wire != _WIRE_LENGTH_DELIMITED:
            continue
        if field == _REQUEST_INPUTS:
            datatype, count, contents = _input_bound(view, start, stop)
            inputs.append((datatype, count))
            total += contents
        elif field == _REQUEST_RAW_CONTENTS:
            raw_lengths.append(stop - start)
        else:
            total += stop - start
    for index, length in enumerate(raw_lengths):
        total += length
        if index < len(inputs) and inputs[index][0] == "BYTES":
            # Each element has a 4-byte length prefix; no more elements than the shape holds
            # are ever made (``_decode_bytes`` stops there).
            elements = min(inputs[index][1], length // 4)
            total += elements * _ELEMENT_OVERHEAD
    return total


def _walk(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The fields of ``view[start:end]``; past ``_MAX_WALKED_FIELDS`` one last (-1, -1, pos,
    end) stands for the rest, which the caller counts at the worst expansion."""
    for walked, (field, wire, s, e) in enumerate(iter_fields(view, start, end)):
        if walked == _MAX_WALKED_FIELDS:
            yield -1, -1, s, end
            return
        yield field, wire, s, e


def _input_bound(view: memoryview, start: int, end: int) -> tuple[str, int, int]:
    """(datatype, element count of the shape, bound of the rest) of one input tensor."""
    datatype = ""
    count = 1
    bound = 0
    for field, wire, s, e in _walk(view, start, end):
        if field < 0:
            return datatype, count, bound + (e - s) * _WORST_EXPANSION
        if field == _INPUT_DATATYPE and wire == _WIRE_LENGTH_DELIMITED:
            datatype = bytes(view[s:e]).decode(errors="replace")
        elif field == _INPUT_SHAPE:
            count = _shape_count(view, wire, s, e, count)
        elif field == _INPUT_CONTENTS and wire == _WIRE_LENGTH_DELIMITED:
            bound += _contents_bound(view, s, e)
        else:
            bound += (e - s) + _ELEMENT_OVERHEAD
    return datatype, count, bound


def _shape_count(view: memoryview, wire: int, start: int, end: int, count: int) -> int:
    """``count`` times the dimensions in one shape field (packed, or one unpacked value)."""
    pos = start
    while pos < end:
        value, pos = read_varint(view, pos)
        # A negative int64 is a 10-byte varint over 2**63: the decoder refuses it later.
        count = min(count * (value if value < 1 << 63 else 0), MAX_ELEMENTS)
        if wire == _WIRE_VARINT:
            break
    return count


def _contents_bound(view: memoryview, start: int, end: int) -> int:
    bound = 0
    for field, wire, s, e in _walk(view, start, end):
        if field < 0:
            return bound + (e - s) * _WORST_EXPANSION
        if field == _BYTES_FIELD:
            bound += (e - s) + _ELEMENT_OVERHEAD
        elif wire == _WIRE_LENGTH_DELIMITED:
            bound += (e - s) * _PACKED_EXPANSION.get(field, 1)
        else:
            bound += _ELEMENT_BYTES.get(field, e - s)
    return bound


def encode_output(array: npt.NDArray[np.generic], datatype: str) -> bytes:
    """Raw bytes as Triton puts them in ``raw_output_contents``."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def _decode_bytes(raw: bytes, count: int, name: str, naming: Naming) -> npt.NDArray[np.object_]:
    """Length-prefixed elements, checked as Triton walks them."""
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        left = len(raw) - pos
        if left < 4:
            raise InvalidRequestError(
                f"{naming.prefix}incomplete string length indicator for inference input "
                f"'{name}' for model '{naming.model}', expecting 4 bytes but only {left} bytes "
                "available. Please make sure the string length indicator is in one buffer."
            )
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidRequestError(
                f"incomplete string data for inference input '{name}', expecting string of "
                f"length {length} but only {len(raw) - pos} bytes available"
            )
        items.append(raw[pos : pos + length])
        pos += length
        if len(items) > count:  # refused before more objects are made
            raise InvalidRequestError(
                f"{naming.prefix}unexpected number of string elements {len(items)} for "
                f"inference input '{name}' for model '{naming.model}', expecting {count}"
            )
    if len(items) != count:
        raise InvalidRequestError(_fewer_strings(count, len(items), name, naming))
    return np.array(items, dtype=np.object_)
