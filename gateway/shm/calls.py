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

from gateway.dataplane import FALLBACK_METADATA, CallContext
from gateway.errors import GatewayError, UnparsableRequestError
from gateway.shm.inline import (
    BYTE_SIZE,
    OFFSET,
    REGION,
    inline,
    uses_shared_memory,
    write_outputs,
)
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

_EARLIER_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
"""How Triton refuses a request before reading its tensors (an unknown model or version, a bad
parameter); any other end of the probe (no backend up, a deadline) says nothing of that."""


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
        stub = self._stub()
        try:
            inline_request, targets = inline(request, self.regions)
        except GatewayError:
            await self._refuse_as_earlier(stub, request, context)
            raise
        try:
            answer, trailers = await _send(stub, inline_request, context)
        except _Refused as refused:
            context.set_trailing_metadata(refused.trailers)
            raise refused.error from None
        try:
            response = service_pb2.ModelInferResponse.FromString(answer)
        except Exception:
            raise UnparsableRequestError() from None
        write_outputs(response, targets)
        context.set_trailing_metadata(trailers)
        answered: bytes = response.SerializeToString()
        return answered

    async def _refuse_as_earlier(
        self,
        stub: grpc.aio.UnaryUnaryMultiCallable,
        request: service_pb2.ModelInferRequest,
        context: CallContext,
    ) -> None:
        """Triton reads a request's tensors only once its model, version and parameters have
        passed (an unknown model is refused before an unknown region): a call Triton refuses
        before reading them is refused so here too, in the backend's words. The backend is
        asked with the request's tensors out of shared memory and the first one given an
        offset without a region, which Triton refuses the moment it reads that tensor, before
        any inference: that refusal means the one found here stands."""
        probe = service_pb2.ModelInferRequest()
        probe.CopyFrom(request)
        del probe.raw_input_contents[:]
        for tensor in probe.inputs:
            tensor.ClearField("contents")
            for key in (REGION, BYTE_SIZE, OFFSET):
                tensor.parameters.pop(key, None)
        for output in probe.outputs:
            for key in (REGION, BYTE_SIZE, OFFSET):
                output.parameters.pop(key, None)
        first = probe.inputs[0] if probe.inputs else probe.outputs[0]
        first.parameters[OFFSET].int64_param = 0
        expected = (
            f"'{OFFSET}' can not be specified without '{REGION}' parameter for tensor "
            f"'{first.name}'"
        )
        try:
            await _send(stub, probe, context)
        except _Refused as refused:
            error = refused.error
            # The fallback's refusal (no backend took the probe) is not Triton's word.
            from_fallback = FALLBACK_METADATA[0] in refused.trailers
            if error.code not in _EARLIER_REFUSALS or error.message == expected or from_fallback:
                return
            context.set_trailing_metadata(refused.trailers)
            raise error from None

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


class _Refused(Exception):
    """A call the edge answered with an error, and its trailers."""

    def __init__(self, error: GatewayError, trailers: list[tuple[str, str]]) -> None:
        super().__init__(error.message)
        self.error = error
        self.trailers = trailers


async def _send(
    stub: grpc.aio.UnaryUnaryMultiCallable,
    request: service_pb2.ModelInferRequest,
    context: CallContext,
) -> tuple[bytes, list[tuple[str, str]]]:
    """The inline call through the edge: its answer and trailers."""
    call = stub(
        request.SerializeToString(),
        metadata=_forwarded(context.invocation_metadata() or ()),
        timeout=context.time_remaining(),
    )
    try:
        answer: bytes = await call
        trailers = await call.trailing_metadata()
    except grpc.aio.AioRpcError as exc:
        error = GatewayError(exc.details() or "", code=exc.code())
        raise _Refused(error, _strings(exc.trailing_metadata() or ())) from None
    return answer, _strings(trailers or ())


def _forwarded(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    """The client's metadata the inline call carries (routing keys, forced variants, its
    own headers), without transport headers."""
    return [
        (k, v) for k, v in metadata if not k.startswith(":") and not k.startswith(_NOT_FORWARDED)
    ]


def _strings(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in metadata if isinstance(v, str)]
