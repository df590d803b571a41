"""A request naming shared-memory regions made into one with its tensors inline, and the
answer's outputs written back into the regions the request asked for — with Triton's
statuses and messages for every region, offset and size it refuses."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.internal.containers import MessageMap
from tritonclient.grpc import service_pb2

from gateway.errors import GatewayError
from gateway.shm.regions import Region, SharedMemoryRegions

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
_KEYS = (REGION, BYTE_SIZE, OFFSET)


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
    """The request with every shared-memory input's bytes in ``raw_input_contents`` (in input
    order: the raw contents of a request are those of its inputs not in shared memory, in
    order) and its shared-memory outputs asked for inline; and where those outputs go."""
    inline_request = service_pb2.ModelInferRequest()
    inline_request.CopyFrom(request)
    given = list(request.raw_input_contents)
    del inline_request.raw_input_contents[:]
    for tensor in inline_request.inputs:
        if REGION in tensor.parameters:
            region, offset, byte_size = _placed(regions, tensor.parameters)
            inline_request.raw_input_contents.append(region.read(offset, byte_size))
            for key in _KEYS:
                tensor.parameters.pop(key, None)
        elif given:
            inline_request.raw_input_contents.append(given.pop(0))
    targets = []
    for output in inline_request.outputs:
        if REGION in output.parameters:
            region, offset, byte_size = _placed(regions, output.parameters)
            targets.append(OutputTarget(output.name, region, offset, byte_size))
            for key in _KEYS:
                output.parameters.pop(key, None)
    return inline_request, targets


def write_outputs(response: service_pb2.ModelInferResponse, targets: list[OutputTarget]) -> None:
    """Each targeted output's bytes into its region; its raw contents left empty, as Triton
    answers an output it wrote to shared memory."""
    wanted = {target.name: target for target in targets}
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


def _placed(
    regions: SharedMemoryRegions, parameters: MessageMap[str, service_pb2.InferParameter]
) -> tuple[Region, int, int]:
    """The region, offset and byte size a tensor's parameters name, checked."""
    name = parameters[REGION].string_param
    region = regions.get(name)
    byte_size = parameters[BYTE_SIZE].int64_param if BYTE_SIZE in parameters else 0
    offset = parameters[OFFSET].int64_param if OFFSET in parameters else 0
    if not region.holds(offset, byte_size):
        raise GatewayError(
            f"Invalid offset + byte size for shared memory region: '{name}'",
            code=grpc.StatusCode.INVALID_ARGUMENT,
        )
    return region, offset, byte_size
