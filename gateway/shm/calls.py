"""Inference calls that name shared-memory regions: tgw-edge hands them over (it never reads
client memory), the tensors are put inline here, and the inline call goes back through the
edge's public port — so routing, splits, breakers and retries stay the edge's alone — then the
outputs are written into the client's regions.

This is the sidecar case: a client on the gateway's host, using shared memory as it would
with a local Triton. The loopback call is plaintext; with TLS on the public port, shared
memory is refused with a line saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from tritonclient.grpc import service_pb2

from gateway.dataplane import CallContext
from gateway.errors import GatewayError, UnparsableRequestError
from gateway.shm.inline import inline, uses_shared_memory, write_outputs
from gateway.shm.regions import SharedMemoryRegions

INFER = "/inference.GRPCInferenceService/ModelInfer"
LOCAL_METADATA = "x-gateway-local-client"
"""Set by tgw-edge (and only by it: it strips the header from clients) on a call from a
client on this host."""
_NOT_FORWARDED = (
    "grpc-",
    "content-type",
    "te",
    "user-agent",
    "x-gateway-tried",
    "x-gateway-local-client",
)


class SharedMemoryCalls:
    def __init__(
        self, regions: SharedMemoryRegions, public_address: Callable[[], str | None]
    ) -> None:
        self.regions = regions
        self._public_address = public_address
        """host:port the edge serves on (None: not serving, or with TLS)."""
        self._channel: grpc.aio.Channel | None = None

    @staticmethod
    def applies(request: bytes) -> service_pb2.ModelInferRequest | None:
        """The parsed request when it names a shared-memory region, else None (a call handed
        over for another reason: the fallback's)."""
        if b"shared_memory_region" not in request:
            return None
        try:
            parsed = service_pb2.ModelInferRequest.FromString(request)
        except Exception:  # DecodeError: the data path answers it as Triton does
            return None
        return parsed if uses_shared_memory(parsed) else None

    @staticmethod
    def require_local(context: CallContext) -> None:
        """Shared memory is for a client on this host: a remote one must not read or write
        this host's memory through the gateway."""
        metadata = context.invocation_metadata() or ()
        if not any(key == LOCAL_METADATA for key, _ in metadata):
            raise GatewayError(
                "shared memory through triton-gateway is for clients on its host, and this call "
                "came from another host: send tensors in the request",
                code=grpc.StatusCode.PERMISSION_DENIED,
            )

    async def infer(self, request: service_pb2.ModelInferRequest, context: CallContext) -> bytes:
        self.require_local(context)
        inline_request, targets = inline(request, self.regions)
        call = self._stub()(
            inline_request.SerializeToString(),
            metadata=_forwarded(context.invocation_metadata() or ()),
            timeout=context.time_remaining(),
        )
        try:
            answer = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            context.set_trailing_metadata(_strings(exc.trailing_metadata() or ()))
            raise GatewayError(exc.details() or "", code=exc.code()) from None
        try:
            response = service_pb2.ModelInferResponse.FromString(answer)
        except Exception:
            raise UnparsableRequestError() from None
        write_outputs(response, targets)
        context.set_trailing_metadata(_strings(trailers or ()))
        answered: bytes = response.SerializeToString()
        return answered

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _stub(self) -> grpc.aio.UnaryUnaryMultiCallable:
        if self._channel is None:
            address = self._public_address()
            if address is None:
                raise GatewayError(
                    "shared memory through triton-gateway needs its public port without TLS "
                    "(the client beside it, on the same host): send tensors in the request",
                    code=grpc.StatusCode.FAILED_PRECONDITION,
                )
            self._channel = grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
        return self._channel.unary_unary(INFER)


def _forwarded(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    """The client's metadata the inline call carries (routing keys, forced variants, its
    own headers), without transport headers."""
    return [
        (k, v) for k, v in metadata if not k.startswith(":") and not k.startswith(_NOT_FORWARDED)
    ]


def _strings(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in metadata if isinstance(v, str)]
