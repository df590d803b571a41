"""``inference.GRPCInferenceService`` as Triton serves it: thin methods over the data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import message_factory
from tritonclient.grpc import service_pb2

from gateway.dataplane import DataPlane
from gateway.errors import UnsupportedMethodError
from gateway.shm.calls import SharedMemoryCalls

SERVICE_NAME = "inference.GRPCInferenceService"
# Methods whose request and response stay bytes end to end (routed by fields 1 and 2).
RAW_METHODS = frozenset(
    {"ModelInfer", "ModelStreamInfer", "ModelReady", "ModelMetadata", "ModelConfig"}
)

_CUDA_SHARED_MEMORY = (
    "is not supported by triton-gateway: a CUDA region lives in the client's GPU memory, which "
    "the backends' GPUs cannot read through the gateway; use system shared memory (with the "
    "gateway on the client's host) or send tensors in the request"
)


class InferenceServicer:
    """Each method unpacks, delegates to the data plane and returns."""

    def __init__(self, dataplane: DataPlane, shared_memory: SharedMemoryCalls) -> None:
        self._dataplane = dataplane
        self._shared_memory = shared_memory

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._dataplane.is_ready())

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        return self._dataplane.server_metadata()

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # tgw-edge hands over the calls naming shared-memory regions (it never reads client
        # memory); every other call here is one its backends could not serve.
        in_shared_memory = self._shared_memory.applies(request)
        if in_shared_memory is not None:
            return await self._shared_memory.infer(in_shared_memory, context)
        return await self._dataplane.model_infer(request, context)

    def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        return _refused_stream()

    async def ModelReady(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dataplane.model_ready(request, context)

    async def ModelMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dataplane.model_query("ModelMetadata", request, context)

    async def ModelConfig(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._dataplane.model_query("ModelConfig", request, context)

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStatisticsResponse:
        return await self._dataplane.model_statistics(request, context)

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        return await self._dataplane.repository_index(request, context)

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        return await self._dataplane.repository_model_load(request, context)

    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        return await self._dataplane.repository_model_unload(request, context)

    async def SystemSharedMemoryStatus(
        self,
        request: service_pb2.SystemSharedMemoryStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryStatusResponse:
        self._shared_memory.require_local(context)
        response = service_pb2.SystemSharedMemoryStatusResponse()
        for region in self._shared_memory.regions.status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    async def SystemSharedMemoryRegister(
        self,
        request: service_pb2.SystemSharedMemoryRegisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryRegisterResponse:
        self._shared_memory.require_local(context)
        self._shared_memory.regions.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return service_pb2.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self,
        request: service_pb2.SystemSharedMemoryUnregisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryUnregisterResponse:
        self._shared_memory.require_local(context)
        self._shared_memory.regions.unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: object, context: object) -> None:
        raise UnsupportedMethodError(f"CudaSharedMemoryStatus {_CUDA_SHARED_MEMORY}")

    async def CudaSharedMemoryRegister(self, request: object, context: object) -> None:
        raise UnsupportedMethodError(f"CudaSharedMemoryRegister {_CUDA_SHARED_MEMORY}")

    async def CudaSharedMemoryUnregister(self, request: object, context: object) -> None:
        raise UnsupportedMethodError(f"CudaSharedMemoryUnregister {_CUDA_SHARED_MEMORY}")

    async def TraceSetting(self, request: object, context: object) -> None:
        raise UnsupportedMethodError(
            "TraceSetting is not supported by triton-gateway: set tracing on each Triton server"
        )

    async def LogSettings(self, request: object, context: object) -> None:
        raise UnsupportedMethodError(
            "LogSettings is not supported by triton-gateway: set logging on each Triton server"
        )


async def _refused_stream() -> AsyncIterator[bytes]:
    """tgw-edge routes every message of a stream itself and hands single messages over as
    ModelInfer: a whole stream never comes here (this socket is the edge's alone)."""
    raise UnsupportedMethodError("ModelStreamInfer is served by tgw-edge, not on this socket")
    yield b""  # pragma: no cover (makes this an async generator)


def inference_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Handlers for every method of the service, built from its descriptor.

    Mirrors the generated ``add_GRPCInferenceServiceServicer_to_server`` except that the
    forwarded methods get no (de)serializer: bytes in, bytes out.
    """
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        if method.name in RAW_METHODS:
            deserializer = serializer = None
        else:
            deserializer = message_factory.GetMessageClass(method.input_type).FromString
            serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming or method.server_streaming:
            raise TypeError(f"unexpected streaming shape for {method.name}")
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behavior, request_deserializer=deserializer, response_serializer=serializer
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
