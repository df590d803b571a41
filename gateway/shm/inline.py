"""A request naming shared-memory regions made into one with its tensors inline, and the
answer's outputs written back into the regions the request asked for — with Triton's
statuses and messages for every region, offset and size it refuses.

``inline`` is the one place a request's tensors are checked, with Triton's checks in Triton's
order: what its gRPC handler does to the inputs (``InferGRPCToInput``: each input's
shared-memory parameters, then its data from a region, its typed contents or the raw
contents) and then to the requested outputs (``InferAllocatorPayload``: each output's
shared-memory and classification parameters, then its region). The request that goes on has
every input's bytes in ``raw_input_contents`` — those of typed contents serialized as Triton
serializes them — so the backend sees the tensors Triton would have read.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.internal.containers import MessageMap
from tritonclient.grpc import service_pb2

from gateway.errors import GatewayError
from gateway.shm.regions import Region, SharedMemoryRegions, unsigned

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
CLASSIFICATION = "classification"
_KEYS = (REGION, BYTE_SIZE, OFFSET)

Parameters = MessageMap[str, service_pb2.InferParameter]

_ELEMENT_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
    "BF16": 2,
}
_INVALID_DATATYPE = "<invalid>"
"""How Triton names a datatype it does not know."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a tensor's shared-memory parameters put it (offset and byte size unsigned)."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class OutputTarget:
    """Where one requested output goes."""

    name: str
    region: Region
    offset: int
    byte_size: int


def uses_shared_memory(request: service_pb2.ModelInferRequest) -> bool:
    return any(REGION in t.parameters for t in request.inputs) or any(
        REGION in t.parameters for t in request.outputs
    )


def inline(
    request: service_pb2.ModelInferRequest, regions: SharedMemoryRegions
) -> tuple[service_pb2.ModelInferRequest, list[OutputTarget]]:
    """The request with every input's bytes in ``raw_input_contents`` (in input order) and
    its shared-memory outputs asked for inline; and where those outputs go. Refused as
    Triton refuses it, at the first tensor Triton refuses."""
    model = request.model_name
    raw = request.raw_input_contents
    data: list[bytes] = []
    next_raw = 0  # the raw contents are those of the inputs that take them, in order
    for tensor in request.inputs:
        placement = shared_memory_params(tensor.name, tensor.parameters)
        if placement is not None:
            if tensor.HasField("contents"):
                raise _invalid(
                    "unexpected 'content' provided when using shared memory for input tensor "
                    f"'{tensor.name}' for model '{model}'"
                )
            region = regions.locate(placement.region, placement.offset, placement.byte_size)
            data.append(region.read(placement.offset, placement.byte_size))
        elif tensor.HasField("contents"):
            if raw:
                raise _invalid(
                    "contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{model}'"
                )
            data.append(explicit_contents(tensor, model))
        elif next_raw < len(raw):
            data.append(raw[next_raw])
            next_raw += 1
        else:
            raise _invalid(
                f"unable to find data for input tensor '{tensor.name}' for model '{model}' "
                "in request."
            )
    targets: list[OutputTarget] = []
    for output in request.outputs:
        placement = shared_memory_params(output.name, output.parameters)
        classified = _classification(output.parameters)
        if placement is not None and classified:
            raise _invalid("output can't set both 'shared_memory_region' and 'classification'")
        if placement is not None:
            region = regions.locate(placement.region, placement.offset, placement.byte_size)
            targets.append(OutputTarget(output.name, region, placement.offset, placement.byte_size))

    inline_request = service_pb2.ModelInferRequest()
    inline_request.CopyFrom(request)
    del inline_request.raw_input_contents[:]
    inline_request.raw_input_contents.extend(data)
    for tensor in inline_request.inputs:
        tensor.ClearField("contents")
        _drop_shared_memory(tensor.parameters)
    for output in inline_request.outputs:
        _drop_shared_memory(output.parameters)
    return inline_request, targets


def shared_memory_params(name: str, parameters: Parameters) -> Placement | None:
    """A tensor's shared-memory parameters, checked as Triton's ``ParseSharedMemoryParams``
    checks them (region, then offset, then byte size); None: the tensor is not in shared
    memory."""
    region: str | None = None
    if REGION in parameters:
        if parameters[REGION].WhichOneof("parameter_choice") != "string_param":
            raise _invalid(
                f"invalid value type for '{REGION}' parameter for tensor '{name}', expected "
                "string_param."
            )
        region = parameters[REGION].string_param
    offset = 0
    if OFFSET in parameters:
        offset = _int64_param(name, parameters, OFFSET, region is not None)
    if BYTE_SIZE in parameters:
        byte_size = _int64_param(name, parameters, BYTE_SIZE, region is not None)
    elif region is not None:
        raise _invalid(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{name}'"
        )
    if region is None:
        return None
    return Placement(region, unsigned(offset), unsigned(byte_size))


def explicit_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor, model: str) -> bytes:
    """An input's typed contents as the bytes Triton makes of them, refused as it refuses
    them: one kind of contents, the kind of the input's datatype (int_contents for INT8,
    INT16 and INT32, uint_contents for UINT8, UINT16 and UINT32)."""
    datatype = tensor.datatype if tensor.datatype in _ELEMENT_BYTES else _INVALID_DATATYPE
    contents = tensor.contents
    data = b""

    def check(kind: str) -> None:
        if data:
            raise _invalid(
                f"unexpected explicit tensor data for input tensor '{tensor.name}' for model "
                f"'{model}', binary data was already supplied."
            )
        if kind != datatype:
            raise _invalid(
                f"unexpected explicit tensor data for input tensor '{tensor.name}' for model "
                f"'{model}' of type '{kind}', expected datatype '{datatype}'"
            )

    int_kind, int_width = _narrowed("INT", datatype)
    uint_kind, uint_width = _narrowed("UINT", datatype)
    fixed: Sequence[tuple[Sequence[object], str, str, int]] = (
        (contents.bool_contents, "BOOL", "?", 1),
        (contents.int_contents, int_kind, "i", int_width),
        (contents.int64_contents, "INT64", "q", 8),
        (contents.uint_contents, uint_kind, "I", uint_width),
        (contents.uint64_contents, "UINT64", "Q", 8),
        (contents.fp32_contents, "FP32", "f", 4),
        (contents.fp64_contents, "FP64", "d", 8),
    )
    for values, kind, code, width in fixed:
        if values:
            check(kind)
            packed = struct.pack(f"<{len(values)}{code}", *values)
            step = struct.calcsize(code)
            # The low bytes of each (little-endian) element, as Triton narrows them.
            data = packed if width == step else _low_bytes(packed, step, width)
    if contents.bytes_contents:
        check("BYTES")
        data = b"".join(
            struct.pack("<I", len(element)) + element for element in contents.bytes_contents
        )
    return data


def write_outputs(response: service_pb2.ModelInferResponse, targets: list[OutputTarget]) -> None:
    """Each targeted output's bytes into its region; its raw contents left empty, as Triton
    answers an output it wrote to shared memory."""
    wanted: dict[str, OutputTarget] = {}
    for each in targets:
        wanted.setdefault(each.name, each)  # an output named twice: its first (as Triton)
    for index, output in enumerate(response.outputs):
        target = wanted.get(output.name)
        if target is None or index >= len(response.raw_output_contents):
            continue
        data = response.raw_output_contents[index]
        if len(data) > target.byte_size:
            raise GatewayError(
                f"shared memory size specified with the request for output '{output.name}' "
                f"({target.byte_size} bytes) should be at least {len(data)} bytes to hold the "
                "results"
            )
        target.region.write(target.offset, data)
        response.raw_output_contents[index] = b""


def _int64_param(name: str, parameters: Parameters, key: str, with_region: bool) -> int:
    if not with_region:
        raise _invalid(
            f"'{key}' can not be specified without '{REGION}' parameter for tensor '{name}'"
        )
    if parameters[key].WhichOneof("parameter_choice") != "int64_param":
        raise _invalid(
            f"invalid value type for '{key}' parameter for tensor '{name}', expected int64_param."
        )
    value: int = parameters[key].int64_param
    return value


def _classification(parameters: Parameters) -> bool:
    """Whether an output asks for classification, its parameter checked as Triton's
    ``ParseClassificationParams`` checks it (as 2.51 words it)."""
    if CLASSIFICATION not in parameters:
        return False
    parameter = parameters[CLASSIFICATION]
    if parameter.WhichOneof("parameter_choice") != "int64_param":
        raise _invalid(f"invalid value type for '{CLASSIFICATION}' parameter, expected int64_param")
    if parameter.int64_param <= 0:
        raise _invalid(f"invalid value for '{CLASSIFICATION}' parameter, expected >= 0")
    return True


def _narrowed(prefix: str, datatype: str) -> tuple[str, int]:
    """The kind and element width int_contents (uint_contents) are read as: the low byte(s)
    of each element for an 8- or 16-bit datatype, else 32-bit elements."""
    for width in (1, 2):
        if datatype == f"{prefix}{8 * width}":
            return datatype, width
    return f"{prefix}32", 4


def _low_bytes(packed: bytes, step: int, width: int) -> bytes:
    return b"".join(packed[start : start + width] for start in range(0, len(packed), step))


def _drop_shared_memory(parameters: Parameters) -> None:
    for key in _KEYS:
        parameters.pop(key, None)


def _invalid(message: str) -> GatewayError:
    return GatewayError(message, code=grpc.StatusCode.INVALID_ARGUMENT)
